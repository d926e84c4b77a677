"""Optional encryption of workflow payloads, and a codec server for the UI and CLI.

With ``PAYLOAD_ENCRYPTION_KEY`` set, every client and worker of the project
encrypts each payload with AES-256-GCM before it leaves the process, so the
Temporal server stores only ciphertext. That covers workflow and activity
inputs and results, signal, update and query arguments, the UI summaries and
details, and failure messages. ``data_converter(settings)`` builds the
converter they all share. Search attributes, workflow ids and task queue names
stay readable.

Usage::

    python codec.py new-key                     print a new random key
    python codec.py serve [--port N] [--allow-origin URL ...]

``serve`` runs the codec server on 127.0.0.1, through which the Temporal web
UI and ``temporal workflow show --codec-endpoint`` decrypt what they show.
docs/encryption.md describes keys, rotation and what stays unencrypted.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from settings import (
    PAYLOAD_KEY_BYTES,
    Settings,
    SettingsError,
    decode_payload_key,
    load_settings,
)

logger = logging.getLogger(__name__)

# The metadata of an encrypted payload, as in Temporal's encryption samples
# for Python, Go and TypeScript, so their tools can read it with the key.
ENCRYPTED_ENCODING = b"binary/encrypted"
KEY_ID_METADATA_KEY = "encryption-key-id"
# AES-GCM with a random 96-bit nonce per payload, written before the
# ciphertext. The 16-byte authentication tag follows the ciphertext.
NONCE_BYTES = 12
TAG_BYTES = 16
# The key id is an HMAC of this label under the key, so it names the key
# without revealing anything about it.
_KEY_ID_LABEL = b"ticket-guard payload key id"

LOOPBACK = "127.0.0.1"
DEFAULT_CODEC_PORT = 8081
# The origins of the web UI that the local stack's dev server serves by
# default. A browser sends whichever host name was typed into it.
DEFAULT_UI_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")
CODEC_OPERATIONS = ("encode", "decode")
# Bounds the memory one request can take. Temporal's default blob size limit
# is 2 MB per request, so a body of stored payloads stays far below this.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# How often the serving thread checks for a stop request, in seconds.
SHUTDOWN_POLL_SECONDS = 0.1


class PayloadDecryptionError(ValueError):
    """A payload that the configured keys cannot decrypt, with the reason."""


@dataclass(frozen=True)
class PayloadKey:
    """An AES-256-GCM key and the id written next to each payload it encrypts."""

    key_id: str
    cipher: AESGCM = field(repr=False)

    @classmethod
    def from_bytes(cls, key: bytes) -> PayloadKey:
        if len(key) != PAYLOAD_KEY_BYTES:
            raise ValueError(
                f"a payload key is {PAYLOAD_KEY_BYTES} bytes, not {len(key)}"
            )
        return cls(key_id=key_id_of(key), cipher=AESGCM(key))


def key_id_of(key: bytes) -> str:
    """Return the 16 hex digits that name ``key`` in encrypted payloads."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """Payload codec that encrypts with one key and decrypts with any known key.

    Decoding passes payloads without the ``binary/encrypted`` encoding through
    unchanged, so histories written before encryption was turned on still
    replay. Without an encryption key the codec only decrypts, which lets
    running tickets finish after encryption is turned off.
    """

    def __init__(
        self,
        encryption_key: PayloadKey | None,
        decryption_keys: Sequence[PayloadKey] = (),
    ) -> None:
        if encryption_key is None and not decryption_keys:
            raise ValueError("EncryptionCodec needs at least one key")
        self.encryption_key = encryption_key
        keys = [encryption_key] if encryption_key is not None else []
        keys += decryption_keys
        self.keys_by_id = {key.key_id: key for key in keys}

    @classmethod
    def from_settings(cls, settings: Settings) -> EncryptionCodec | None:
        """Build the codec of PAYLOAD_ENCRYPTION_KEY and PAYLOAD_DECRYPTION_KEYS.

        Returns None when both are unset, which means no encryption.
        """
        encryption_key = None
        if settings.payload_encryption_key is not None:
            encryption_key = PayloadKey.from_bytes(
                decode_payload_key(settings.payload_encryption_key.get_secret_value())
            )
        decryption_keys = [
            PayloadKey.from_bytes(decode_payload_key(key.get_secret_value()))
            for key in settings.payload_decryption_keys
        ]
        if encryption_key is None and not decryption_keys:
            return None
        return cls(encryption_key, decryption_keys)

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key that decrypts, the encryption key's first."""
        return list(self.keys_by_id)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return self.encrypt(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return self.decrypt(payloads)

    def encrypt(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Encrypt each whole payload, metadata included, into a new payload."""
        key = self.encryption_key
        if key is None:
            return list(payloads)

        encrypted = []
        for payload in payloads:
            nonce = secrets.token_bytes(NONCE_BYTES)
            ciphertext = key.cipher.encrypt(nonce, payload.SerializeToString(), None)
            encrypted.append(
                Payload(
                    metadata={
                        "encoding": ENCRYPTED_ENCODING,
                        KEY_ID_METADATA_KEY: key.key_id.encode(),
                    },
                    data=nonce + ciphertext,
                )
            )
        return encrypted

    def decrypt(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Decrypt each encrypted payload and pass the others through unchanged.

        Raises:
            PayloadDecryptionError: no configured key has the payload's key
                id, or the payload fails authentication.
        """
        return [self._decrypt_one(payload) for payload in payloads]

    def _decrypt_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload

        key_id = payload.metadata.get(KEY_ID_METADATA_KEY, b"").decode(errors="replace")
        key = self.keys_by_id.get(key_id)
        if key is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r}, but no configured key "
                f"has that id (configured: {', '.join(self.key_ids)}); add that "
                "key to PAYLOAD_DECRYPTION_KEYS"
            )

        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecryptionError(
                f"payload with key id {key_id} is {len(data)} bytes, too short "
                "to be encrypted data"
            )
        try:
            plaintext = key.cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload with key id {key_id} failed authentication: its data "
                "or key id was changed after encryption"
            ) from None
        try:
            return Payload.FromString(plaintext)
        except DecodeError:
            raise PayloadDecryptionError(
                f"payload with key id {key_id} decrypts to bytes that are not a "
                "Temporal payload"
            ) from None


def data_converter(settings: Settings) -> DataConverter:
    """Return the data converter of every client and worker the project builds.

    Without payload keys this is the SDK's default converter. With keys, the
    payloads go through EncryptionCodec, and failure messages and stack
    traces move into the failure's encoded attributes so they are encrypted
    too: SMTP replies often quote the recipient's address. The server then
    stores "Encoded failure" as each failure's message.
    """
    codec = EncryptionCodec.from_settings(settings)
    if codec is None:
        return DataConverter.default
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# The codec server


class CodecRequestError(Exception):
    """A codec server request rejected with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _CodecHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        port: int,
        codec: EncryptionCodec,
        namespace: str,
        allowed_origins: Iterable[str],
    ) -> None:
        self.codec = codec
        self.namespace = namespace
        self.allowed_origins = frozenset(allowed_origins)
        super().__init__((LOOPBACK, port), _CodecRequestHandler)


class _CodecRequestHandler(BaseHTTPRequestHandler):
    server: _CodecHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "ticket-guard-codec"

    def do_OPTIONS(self) -> None:
        """Reply to a browser's CORS preflight from an allowed origin."""
        try:
            self._operation()
            origin = self._allowed_origin()
            if origin is None:
                raise CodecRequestError(400, "a CORS preflight needs an Origin header")
        except CodecRequestError as error:
            self._send_error(error)
            return

        # The origin is trusted, so every header it requests is allowed. The
        # UI adds Authorization when it passes the user's access token.
        requested_headers = self.headers.get(
            "Access-Control-Request-Headers", "Content-Type, X-Namespace"
        )
        self.send_response(204)
        self._send_cors_headers(origin)
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", requested_headers)
        self.send_header("Access-Control-Max-Age", "600")
        # Chromium sends this preflight header before a page from another host
        # may call a loopback address (Private Network Access).
        if self.headers.get("Access-Control-Request-Private-Network") == "true":
            self.send_header("Access-Control-Allow-Private-Network", "true")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        try:
            operation = self._operation()
            origin = self._allowed_origin()
            payloads = self._read_payloads()
            if operation == "encode":
                result = self.server.codec.encrypt(payloads)
            else:
                result = self.server.codec.decrypt(payloads)
        except PayloadDecryptionError as error:
            self._send_error(CodecRequestError(400, str(error)))
            return
        except CodecRequestError as error:
            self._send_error(error)
            return

        body = json.dumps(
            {"payloads": [json_format.MessageToDict(p) for p in result]}
        ).encode()
        self.send_response(200)
        if origin is not None:
            self._send_cors_headers(origin)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _operation(self) -> str:
        """Return "encode" or "decode" from the path, checking its namespace.

        The path is ``/encode``, ``/decode``, or either one under a namespace
        (``/default/decode``), as the CLI's ``{namespace}`` template makes it.
        """
        parts = [unquote(part) for part in urlsplit(self.path).path.split("/") if part]
        if not parts or parts[-1] not in CODEC_OPERATIONS or len(parts) > 2:
            raise CodecRequestError(
                404, f"no such path {self.path!r}; use /encode or /decode"
            )

        served = self.server.namespace
        for namespace in (self.headers.get("X-Namespace"), *parts[:-1]):
            if namespace is not None and namespace != served:
                raise CodecRequestError(
                    403,
                    f"namespace {namespace!r} is not served here; this codec "
                    f"server has the keys of namespace {served!r}",
                )
        return parts[-1]

    def _allowed_origin(self) -> str | None:
        """Return the request's Origin, or None for a client that sends none.

        Browsers send Origin with every cross-origin request. Any page a user
        opens could post to 127.0.0.1, so other origins are rejected.
        """
        origin = self.headers.get("Origin")
        if origin is None:
            return None
        if origin not in self.server.allowed_origins:
            raise CodecRequestError(
                403,
                f"origin {origin!r} is not allowed; start the codec server with "
                f"--allow-origin {origin} to let that web UI use it",
            )
        return origin

    def _read_payloads(self) -> list[Payload]:
        if self.headers.get_content_type() != "application/json":
            raise CodecRequestError(
                415, "the request body must be JSON (Content-Type: application/json)"
            )
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise CodecRequestError(411, "the request needs a Content-Length header")
        length = int(length_header)
        if length > MAX_REQUEST_BYTES:
            raise CodecRequestError(
                413,
                f"the request body is {length} bytes, more than the maximum of "
                f"{MAX_REQUEST_BYTES}",
            )

        body = self.rfile.read(length)
        try:
            message = json_format.Parse(body, Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError) as error:
            raise CodecRequestError(
                400,
                'the request body is not {"payloads": [...]} with payloads in '
                f"protobuf JSON form: {error}",
            ) from None
        return list(message.payloads)

    def _send_cors_headers(self, origin: str) -> None:
        self.send_header("Access-Control-Allow-Origin", origin)
        # The UI's "include cross-origin credentials" option needs this.
        self.send_header("Access-Control-Allow-Credentials", "true")
        self.send_header("Vary", "Origin")

    def _send_error(self, error: CodecRequestError) -> None:
        logger.warning(
            "Codec request rejected",
            extra={
                "method": self.command,
                "path": self.path,
                "status": error.status,
                "reason": str(error),
            },
        )
        body = (str(error) + "\n").encode()
        self.send_response(error.status)
        # The body of a rejected request may be unread, so the connection
        # cannot carry another request.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server logs every request to stderr. Errors are logged in
        # _send_error, so each request is only worth a debug line.
        logger.debug("Codec request: " + format, *args)


class CodecServer:
    """The Temporal codec server protocol on 127.0.0.1, served from a thread.

    ``POST /encode`` and ``POST /decode`` take and return the JSON object
    ``{"payloads": [...]}`` with payloads in protobuf JSON form, whose bytes
    are base64. Requests for a namespace other than ``namespace``, by the
    ``X-Namespace`` header or the path, are rejected. The server has no
    authentication: any process that reaches its port can decrypt, which is
    why it listens on loopback only.
    """

    def __init__(
        self,
        codec: EncryptionCodec,
        *,
        namespace: str,
        allowed_origins: Iterable[str] = DEFAULT_UI_ORIGINS,
        port: int = DEFAULT_CODEC_PORT,
    ) -> None:
        # Binds the port at once, so a port in use raises OSError here.
        self._http = _CodecHTTPServer(port, codec, namespace, allowed_origins)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self._http.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="codec-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, wait for the serving thread and close the socket."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

    def __enter__(self) -> CodecServer:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()


# The command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Payload encryption tools: make a key, or run the codec server "
            "that decrypts payloads for the Temporal web UI and CLI."
        )
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "new-key",
        help="print a new random key for PAYLOAD_ENCRYPTION_KEY, as base64",
    )
    serve = commands.add_parser(
        "serve",
        help="run the codec server on 127.0.0.1 with the keys from the settings",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_CODEC_PORT,
        metavar="PORT",
        help="TCP port on 127.0.0.1 to listen on. Default: %(default)s.",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="URL",
        help=(
            "origin of a web UI that may call the server, such as "
            "http://localhost:8233; repeat for several. Default: "
            f"{' and '.join(DEFAULT_UI_ORIGINS)}."
        ),
    )
    return parser.parse_args(argv)


def new_key() -> str:
    """Return a new random payload key as base64."""
    return base64.b64encode(secrets.token_bytes(PAYLOAD_KEY_BYTES)).decode()


def serve(settings: Settings, port: int, allowed_origins: Sequence[str]) -> int:
    """Run the codec server until SIGINT or SIGTERM; return the exit code."""
    codec = EncryptionCodec.from_settings(settings)
    if codec is None:
        logger.error(
            "Codec server not started: PAYLOAD_ENCRYPTION_KEY and "
            "PAYLOAD_DECRYPTION_KEYS are both unset; set them to the keys "
            "that the workers use"
        )
        return 2

    try:
        server = CodecServer(
            codec,
            namespace=settings.temporal_namespace,
            allowed_origins=allowed_origins,
            port=port,
        )
    except OSError as error:
        logger.error(
            "Codec server not started: cannot listen on %s:%d: %s",
            LOOPBACK,
            port,
            error,
        )
        return 1

    stop = threading.Event()

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        stop.set()

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, on_signal)

    with server:
        logger.info(
            "Codec server started",
            extra={
                "url": server.url,
                "namespace": settings.temporal_namespace,
                "key_ids": codec.key_ids,
                "encrypts": codec.encryption_key is not None,
                "allowed_origins": sorted(allowed_origins),
            },
        )
        stop.wait()
    logger.info("Codec server stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "new-key":
        sys.stdout.write(new_key() + "\n")
        return 0

    # Imported here because worker imports this module.
    from worker import ExtraFieldsFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(
        ExtraFieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    try:
        settings = load_settings()
    except SettingsError as error:
        logger.error("Codec server not started: %s", error)
        return 2
    return serve(settings, args.port, args.allow_origin or list(DEFAULT_UI_ORIGINS))


if __name__ == "__main__":
    sys.exit(main())
