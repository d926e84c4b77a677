"""Payload encryption: keys, the codec, the codec server and an encrypted history.

The history test runs a ticket on the time-skipping server with the real
worker, SQLite and a mail sink, once with a key and once without, and reads
the history's raw bytes for the customer's name, mail address and phone.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionResponse
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import TicketActivities
from codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA_KEY,
    CodecServer,
    EncryptionCodec,
    PayloadDecryptionError,
    PayloadKey,
    data_converter,
    key_id_of,
    new_key,
)
from mailsink import MailSink
from portal import EventRejected, Tech, TicketPortal
from settings import Settings, SettingsError, decode_payload_key, load_settings
from starter import TicketClient, connect
from tests.binaries import dev_server_path, time_skipping_server_path
from tests.test_workflow import TECH_K4, Service, future_day, local, new_ticket
from worker import connect_client, create_worker

CUSTOMER_NAME = "Dana Reyes"
CUSTOMER_EMAIL = "dana@customer.test"
CUSTOMER_PHONE = "+1 555 0100"
CUSTOMER_DATA = (CUSTOMER_NAME, CUSTOMER_EMAIL, CUSTOMER_PHONE)

UI_ORIGIN = "http://127.0.0.1:8233"

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


def codec_of(*keys: bytes) -> EncryptionCodec:
    """Return a codec that encrypts with the first key and decrypts with all."""
    first, *rest = [PayloadKey.from_bytes(key) for key in keys]
    return EncryptionCodec(first, rest)


def json_payload(value: Any) -> Payload:
    converted = DataConverter.default.payload_converter.to_payloads([value])
    return converted[0]


def variables_starting_with(prefixes: tuple[str, ...]) -> Iterator[str]:
    return (name for name in os.environ if name.startswith(prefixes))


@pytest.fixture
def clean_settings_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unset payload keys and Temporal profile variables, and hide any .env file.

    The Temporal client profile then comes from a config file that does not
    exist, so no TLS or API key reaches the test servers.
    """
    for name in list(variables_starting_with(("PAYLOAD_", "TEMPORAL_"))):
        monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "no-profile.toml"))
    monkeypatch.chdir(tmp_path)


# Keys in the settings


@pytest.mark.usefixtures("clean_settings_environment")
def test_payload_key_accepts_hex_and_base64() -> None:
    spellings = [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        f"  {base64.b64encode(KEY).decode()}\n",
    ]
    for spelling in spellings:
        settings = load_settings(payload_encryption_key=spelling)
        assert settings.payload_encryption_key is not None
        secret = settings.payload_encryption_key.get_secret_value()
        assert decode_payload_key(secret) == KEY, spelling


@pytest.mark.usefixtures("clean_settings_environment")
def test_payload_key_of_wrong_length_is_rejected_unquoted() -> None:
    short_key = base64.b64encode(b"sixteen byte key").decode()
    with pytest.raises(SettingsError) as raised:
        load_settings(payload_encryption_key=short_key)

    message = str(raised.value)
    assert "PAYLOAD_ENCRYPTION_KEY" in message
    assert "must decode to 32 bytes but decodes to 16" in message
    assert short_key not in message


@pytest.mark.usefixtures("clean_settings_environment")
def test_payload_key_that_is_no_encoding_is_rejected() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(payload_encryption_key="not a key at all!")

    message = str(raised.value)
    assert "PAYLOAD_ENCRYPTION_KEY: Value error, not a key" in message
    assert "not a key at all!" not in message


@pytest.mark.usefixtures("clean_settings_environment")
def test_decryption_keys_are_read_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYLOAD_ENCRYPTION_KEY", KEY.hex())
    monkeypatch.setenv(
        "PAYLOAD_DECRYPTION_KEYS",
        f"{OTHER_KEY.hex()}, {base64.b64encode(KEY).decode()}",
    )
    settings = load_settings()

    decoded = [
        decode_payload_key(key.get_secret_value())
        for key in settings.payload_decryption_keys
    ]
    assert decoded == [OTHER_KEY, KEY]
    assert settings.has_payload_keys


@pytest.mark.usefixtures("clean_settings_environment")
def test_bad_decryption_key_names_its_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYLOAD_DECRYPTION_KEYS", f"{OTHER_KEY.hex()},abcd")
    with pytest.raises(SettingsError) as raised:
        load_settings()

    message = str(raised.value)
    assert "PAYLOAD_DECRYPTION_KEYS: Value error, key 2 of the list" in message
    assert OTHER_KEY.hex() not in message


@pytest.mark.usefixtures("clean_settings_environment")
def test_settings_repr_hides_payload_keys() -> None:
    settings = load_settings(
        payload_encryption_key=KEY.hex(), payload_decryption_keys=OTHER_KEY.hex()
    )

    text = repr(settings)
    assert KEY.hex() not in text
    assert OTHER_KEY.hex() not in text
    assert "payload_encryption_key=SecretStr('**********')" in text


@pytest.mark.usefixtures("clean_settings_environment")
def test_no_key_means_default_converter() -> None:
    settings = load_settings(payload_encryption_key="")

    assert settings.payload_encryption_key is None
    assert not settings.has_payload_keys
    assert EncryptionCodec.from_settings(settings) is None
    assert data_converter(settings) is DataConverter.default


@pytest.mark.usefixtures("clean_settings_environment")
def test_new_key_is_a_valid_random_key() -> None:
    first = new_key()
    second = new_key()

    assert first != second
    settings = load_settings(payload_encryption_key=first)
    codec = EncryptionCodec.from_settings(settings)
    assert codec is not None
    assert codec.key_ids == [key_id_of(decode_payload_key(first))]


# The codec


def test_codec_round_trip_restores_payloads() -> None:
    codec = codec_of(KEY)
    originals = [
        json_payload({"customer": {"email": CUSTOMER_EMAIL}}),
        json_payload(None),
        Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00\xff"),
        Payload(),
    ]

    encrypted = codec.encrypt(originals)

    assert len(encrypted) == len(originals)
    for payload in encrypted:
        assert payload.metadata["encoding"] == ENCRYPTED_ENCODING
        assert payload.metadata[KEY_ID_METADATA_KEY] == key_id_of(KEY).encode()
        assert CUSTOMER_EMAIL.encode() not in payload.SerializeToString()
    assert codec.decrypt(encrypted) == originals


def test_codec_uses_a_new_nonce_per_payload() -> None:
    codec = codec_of(KEY)
    payload = json_payload(CUSTOMER_EMAIL)

    first, second = codec.encrypt([payload, payload])

    assert first.data[:12] != second.data[:12]
    assert first.data != second.data


async def test_codec_async_interface_matches_sync() -> None:
    codec = codec_of(KEY)
    payload = json_payload(CUSTOMER_PHONE)

    encoded = await codec.encode([payload])

    assert encoded[0].metadata["encoding"] == ENCRYPTED_ENCODING
    assert await codec.decode(encoded) == [payload]


def test_codec_rejects_changed_ciphertext() -> None:
    codec = codec_of(KEY)
    encrypted = codec.encrypt([json_payload(CUSTOMER_EMAIL)])[0]

    for position in (0, 12, len(encrypted.data) - 1):
        changed = Payload()
        changed.CopyFrom(encrypted)
        flipped = bytearray(encrypted.data)
        flipped[position] ^= 0x01
        changed.data = bytes(flipped)
        with pytest.raises(PayloadDecryptionError, match="failed authentication"):
            codec.decrypt([changed])


def test_codec_rejects_payload_moved_to_another_key_id() -> None:
    codec = codec_of(KEY, OTHER_KEY)
    encrypted = codec.encrypt([json_payload(CUSTOMER_EMAIL)])[0]

    encrypted.metadata[KEY_ID_METADATA_KEY] = key_id_of(OTHER_KEY).encode()

    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        codec.decrypt([encrypted])


def test_codec_rejects_truncated_payload() -> None:
    codec = codec_of(KEY)
    encrypted = codec.encrypt([json_payload(CUSTOMER_EMAIL)])[0]

    encrypted.data = encrypted.data[:20]

    with pytest.raises(PayloadDecryptionError, match="20 bytes, too short"):
        codec.decrypt([encrypted])


def test_wrong_key_error_names_both_key_ids() -> None:
    encrypted = codec_of(OTHER_KEY).encrypt([json_payload(CUSTOMER_EMAIL)])

    with pytest.raises(PayloadDecryptionError) as raised:
        codec_of(KEY).decrypt(encrypted)

    message = str(raised.value)
    assert f"key id '{key_id_of(OTHER_KEY)}'" in message
    assert f"configured: {key_id_of(KEY)}" in message
    assert "PAYLOAD_DECRYPTION_KEYS" in message


def test_rotated_codec_reads_old_key_writes_new() -> None:
    before_rotation = codec_of(OTHER_KEY).encrypt([json_payload(CUSTOMER_EMAIL)])
    rotated = codec_of(KEY, OTHER_KEY)

    assert rotated.decrypt(before_rotation) == [json_payload(CUSTOMER_EMAIL)]
    written = rotated.encrypt([json_payload(CUSTOMER_EMAIL)])[0]
    assert written.metadata[KEY_ID_METADATA_KEY] == key_id_of(KEY).encode()


def test_codec_passes_unencrypted_payloads_through() -> None:
    plain = json_payload({"email": CUSTOMER_EMAIL})

    assert codec_of(KEY).decrypt([plain]) == [plain]


def test_decrypt_only_codec_stores_plain_payloads() -> None:
    old_payloads = codec_of(OTHER_KEY).encrypt([json_payload(CUSTOMER_EMAIL)])
    decrypt_only = EncryptionCodec(None, [PayloadKey.from_bytes(OTHER_KEY)])

    assert decrypt_only.encrypt([json_payload(1)]) == [json_payload(1)]
    assert decrypt_only.decrypt(old_payloads) == [json_payload(CUSTOMER_EMAIL)]


@pytest.mark.usefixtures("clean_settings_environment")
async def test_converter_encrypts_failure_messages() -> None:
    converter = data_converter(load_settings(payload_encryption_key=KEY.hex()))
    error = ApplicationError(
        f"recipient rejected: 451 <{CUSTOMER_EMAIL}>: mailbox busy",
        type="MailDeliveryDelayed",
    )

    failure = Failure()
    await converter.encode_failure(error, failure)

    assert failure.message == "Encoded failure"
    assert CUSTOMER_EMAIL.encode() not in failure.SerializeToString()
    assert failure.application_failure_info.type == "MailDeliveryDelayed"
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert decoded.message == str(error.message)


# The codec server


@pytest.fixture
def codec_server() -> Iterator[CodecServer]:
    with CodecServer(
        codec_of(KEY), namespace="default", allowed_origins=[UI_ORIGIN], port=0
    ) as server:
        yield server


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    server: CodecServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def post_payloads(
    server: CodecServer,
    path: str,
    payloads: list[dict[str, Any]],
    **headers: str,
) -> Reply:
    return request(
        server,
        "POST",
        path,
        json.dumps({"payloads": payloads}).encode(),
        {"Content-Type": "application/json", **headers},
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def proto_json(payload: Payload) -> dict[str, Any]:
    """Write a payload in protobuf JSON form by hand, as the web UI sends it."""
    return {
        "metadata": {name: b64(value) for name, value in payload.metadata.items()},
        "data": b64(payload.data),
    }


def test_codec_server_decodes_what_it_encoded(codec_server: CodecServer) -> None:
    plain = {
        "metadata": {"encoding": b64(b"json/plain")},
        "data": b64(json.dumps({"email": CUSTOMER_EMAIL}).encode()),
    }

    encoded = post_payloads(codec_server, "/encode", [plain])

    assert encoded.status == 200
    assert encoded.headers["content-type"] == "application/json"
    [encrypted] = encoded.json()["payloads"]
    assert base64.b64decode(encrypted["metadata"]["encoding"]) == ENCRYPTED_ENCODING
    assert CUSTOMER_EMAIL not in base64.b64decode(encrypted["data"]).decode("latin-1")

    decoded = post_payloads(codec_server, "/decode", [encrypted])

    assert decoded.status == 200
    assert decoded.json() == {"payloads": [plain]}


@pytest.mark.usefixtures("clean_settings_environment")
async def test_codec_server_answers_ui_request(codec_server: CodecServer) -> None:
    # A payload as the workers store it, sent the way the web UI sends it.
    converter = data_converter(load_settings(payload_encryption_key=KEY.hex()))
    [stored] = await converter.encode([{"customer": {"phone": CUSTOMER_PHONE}}])

    preflight = request(
        codec_server,
        "OPTIONS",
        "/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == (
        "content-type,x-namespace"
    )
    assert preflight.headers["access-control-allow-credentials"] == "true"

    decoded = post_payloads(
        codec_server,
        "/decode",
        [proto_json(stored)],
        Origin=UI_ORIGIN,
        **{"X-Namespace": "default"},
    )
    assert decoded.status == 200
    assert decoded.headers["access-control-allow-origin"] == UI_ORIGIN
    [payload] = decoded.json()["payloads"]
    assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(payload["data"])) == {
        "customer": {"phone": CUSTOMER_PHONE}
    }


def test_codec_server_allows_remote_ui_to_call_loopback() -> None:
    remote_ui = "https://temporal.company.test"
    with CodecServer(
        codec_of(KEY), namespace="default", allowed_origins=[remote_ui], port=0
    ) as server:
        preflight = request(
            server,
            "OPTIONS",
            "/decode",
            headers={
                "Origin": remote_ui,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Private-Network": "true",
            },
        )

    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == remote_ui
    assert preflight.headers["access-control-allow-private-network"] == "true"


def test_codec_server_accepts_namespace_in_path(codec_server: CodecServer) -> None:
    encrypted = codec_of(KEY).encrypt([json_payload(CUSTOMER_NAME)])

    decoded = post_payloads(
        codec_server,
        "/default/decode",
        [proto_json(encrypted[0])],
        **{"X-Namespace": "default"},
    )

    assert decoded.status == 200
    [payload] = decoded.json()["payloads"]
    assert json.loads(base64.b64decode(payload["data"])) == CUSTOMER_NAME


def test_codec_server_rejects_other_origin(codec_server: CodecServer) -> None:
    preflight = request(
        codec_server,
        "OPTIONS",
        "/decode",
        headers={
            "Origin": "http://pages.test",
            "Access-Control-Request-Method": "POST",
        },
    )
    posted = post_payloads(codec_server, "/decode", [], Origin="http://pages.test")

    for reply in (preflight, posted):
        assert reply.status == 403
        assert "access-control-allow-origin" not in reply.headers
        assert b"--allow-origin http://pages.test" in reply.body


def test_codec_server_rejects_other_namespace(codec_server: CodecServer) -> None:
    by_header = post_payloads(codec_server, "/decode", [], **{"X-Namespace": "billing"})
    by_path = post_payloads(codec_server, "/billing/decode", [])

    for reply in (by_header, by_path):
        assert reply.status == 403
        assert b"namespace 'billing' is not served here" in reply.body


def test_codec_server_reports_bad_requests(codec_server: CodecServer) -> None:
    not_json = request(
        codec_server,
        "POST",
        "/decode",
        b"payloads please",
        {"Content-Type": "application/json"},
    )
    wrong_type = request(
        codec_server, "POST", "/decode", b"{}", {"Content-Type": "text/plain"}
    )
    wrong_shape = post_payloads(codec_server, "/decode", [{"data": 17}])
    unknown_path = post_payloads(codec_server, "/status", [])
    too_deep = post_payloads(codec_server, "/a/b/decode", [])

    assert not_json.status == 400
    assert b'not {"payloads": [...]}' in not_json.body
    assert wrong_type.status == 415
    assert wrong_shape.status == 400
    assert unknown_path.status == 404
    assert too_deep.status == 404


def test_codec_server_reports_unknown_key(codec_server: CodecServer) -> None:
    encrypted = codec_of(OTHER_KEY).encrypt([json_payload(CUSTOMER_EMAIL)])

    decoded = post_payloads(codec_server, "/decode", [proto_json(encrypted[0])])

    assert decoded.status == 400
    assert f"key id '{key_id_of(OTHER_KEY)}'".encode() in decoded.body


def test_codec_server_serves_empty_list(codec_server: CodecServer) -> None:
    decoded = post_payloads(codec_server, "/decode", [])

    assert decoded.status == 200
    assert decoded.json() == {"payloads": []}


# Histories on the time-skipping server


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server_path()
    )
    async with environment:
        yield environment


def server_settings(
    env: WorkflowEnvironment, payload_key: str | None, **overrides: Any
) -> Settings:
    """Return settings that reach the test server, with or without a key."""
    return load_settings(
        temporal_address=env.client.service_client.config.target_host,
        temporal_namespace=env.client.namespace,
        temporal_task_queue=f"codec-{uuid.uuid4()}",
        payload_encryption_key=payload_key,
        payload_decryption_keys=[],
        **overrides,
    )


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Yield every payload inside a protobuf message with its field path."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type.GetOptions().map_entry:
            children = [(f"{name}[{key}]", child) for key, child in value.items()]
        elif field.is_repeated:
            children = [(name, child) for child in value]
        else:
            children = [(name, value)]
        for child_path, child in children:
            if not isinstance(child, Message):
                continue
            if isinstance(child, Payload):
                yield child_path, child
            else:
                yield from payloads_in(child, child_path)


# A local activity's marker keeps the activity's type, sequence number and
# times in plain JSON next to its encrypted result.
LOCAL_ACTIVITY_MARKER_DATA = "events.marker_recorded_event_attributes.details[data]"


def passes_through_codec(path: str) -> bool:
    """Return whether the SDK encodes the payloads at ``path`` with the codec.

    Search attributes stay readable because the server indexes them.
    """
    return ".search_attributes." not in path and not path.startswith(
        LOCAL_ACTIVITY_MARKER_DATA
    )


@dataclasses.dataclass
class TicketRecord:
    """What the Temporal server stored of one ticket, as raw protobuf."""

    events: list[HistoryEvent]
    # The workflow's description while its check-in mail waited for a retry.
    retrying: DescribeWorkflowExecutionResponse


@pytest.mark.usefixtures("clean_settings_environment")
@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
async def test_history_hides_customer_data_when_encrypted(
    env: WorkflowEnvironment, tmp_path: Path, encrypted: bool
) -> None:
    payload_key = new_key() if encrypted else None
    async with MailSink("127.0.0.1", 0) as sink:
        settings = server_settings(
            env,
            payload_key,
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            ops_email="ops@company.test",
            default_timezone="America/New_York",
            **sink.smtp_settings(),
        )
        # The clients of worker.py and starter.py. The portal below uses the
        # worker's, as a portal process would use one built the same way.
        client = await connect_client(settings)
        starter_client = await connect(settings)
        assert (client.data_converter.payload_codec is not None) == encrypted
        assert (starter_client.data_converter.payload_codec is not None) == encrypted

        activities = TicketActivities.from_settings(settings)
        try:
            async with create_worker(client, settings, activities):
                service = Service(env, client, settings, activities, sink)
                try:
                    record = await run_ticket_with_retried_mail(service, starter_client)
                finally:
                    await service.terminate_open_tickets()
        finally:
            activities.close()

    history = History(events=record.events)
    raw_history = history.SerializeToString()
    raw_description = record.retrying.SerializeToString()
    payloads = [
        (path, payload)
        for path, payload in payloads_in(history)
        if passes_through_codec(path)
    ]
    raw_payload_data = b"".join(payload.data for _path, payload in payloads)
    [retried_mail] = record.retrying.pending_activities
    mail_failure = retried_mail.last_failure
    paths = {path for path, _payload in payloads}
    assert "events.user_metadata.summary" in paths
    assert "events.workflow_execution_started_event_attributes.input.payloads" in paths

    if encrypted:
        assert payload_key is not None
        key_id = key_id_of(decode_payload_key(payload_key)).encode()
        for path, payload in payloads:
            assert payload.metadata["encoding"] == ENCRYPTED_ENCODING, path
            assert payload.metadata[KEY_ID_METADATA_KEY] == key_id, path
        assert mail_failure.message == "Encoded failure"
        for text in CUSTOMER_DATA:
            assert text.encode() not in raw_history, text
            assert text.encode() not in raw_payload_data, text
            assert text.encode() not in raw_description, text
    else:
        assert CUSTOMER_EMAIL in mail_failure.message
        for text in CUSTOMER_DATA:
            assert text.encode() in raw_history, text
            assert text.encode() in raw_payload_data, text
        assert CUSTOMER_EMAIL.encode() in raw_description


async def run_ticket_with_retried_mail(
    service: Service, starter_client: Client
) -> TicketRecord:
    """Open, claim and close a ticket whose check-in mail is retried.

    The customer's mail server first replies with a temporary error that
    quotes the address, as many servers do, so the retrying activity's last
    failure carries it.
    """
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    ticket_id = ticket["ticket_id"]
    queue = service.settings.temporal_task_queue
    portal = TicketPortal(service.client, queue)

    await service.skip_to(local(day, 9, 0))
    await TicketClient(starter_client, queue).open(ticket)
    service.started.append(f"ticket-{ticket_id}")
    await portal.claim(ticket_id, Tech(**TECH_K4))
    await service.skip_to(local(day, 9, 20))
    await portal.contact_attempt(ticket_id, channel="phone", outcome="reached")

    # The check-in falls due three hours after the claim.
    service.sink.reject_recipient(
        CUSTOMER_EMAIL, f"451 4.2.1 <{CUSTOMER_EMAIL}>: mailbox busy, try later"
    )
    await service.skip_to(local(day, 12, 30))
    assert service.mails(ticket_id) == [], "check-in sent despite the rejection"
    handle = service.client.get_workflow_handle(f"ticket-{ticket_id}")
    retrying = (await handle.describe()).raw_description
    service.sink.clear_faults()
    await service.skip_to(local(day, 13, 30))
    assert ("check_in", CUSTOMER_EMAIL) in service.mails(ticket_id)

    # A rejected update's reason reaches the portal readable, encrypted or not.
    with pytest.raises(EventRejected) as rejected:
        await portal.time_logged(ticket_id, hours=30)
    assert rejected.value.reason == (
        "invalid hours 30: must be more than 0 and at most 24"
    )

    status = await portal.close(ticket_id, reason="resolved")
    assert status["state"] == "closed"
    # The ticket ends once it has stored its record, in real time.
    assert (await handle.result())["state"] == "closed"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    events = list((await handle.fetch_history()).events)
    return TicketRecord(events=events, retrying=retrying)


@pytest.mark.usefixtures("clean_settings_environment")
async def test_cli_shows_history_through_codec_server(
    env: WorkflowEnvironment,
) -> None:
    settings = server_settings(env, KEY.hex())
    client = await connect(settings)
    workflow_id = f"codec-{uuid.uuid4()}"
    # No worker polls this queue: the started event alone is the history.
    handle = await client.start_workflow(
        "TicketWorkflow",
        {"customer": {"email": CUSTOMER_EMAIL}},
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
        static_summary=f"Summary for {CUSTOMER_NAME}",
        run_timeout=timedelta(minutes=5),
    )

    command = [
        dev_server_path(),
        "workflow",
        "show",
        "--address",
        settings.temporal_address,
        "--namespace",
        settings.temporal_namespace,
        "--workflow-id",
        workflow_id,
        "--detailed",
    ]
    codec = EncryptionCodec.from_settings(settings)
    assert codec is not None
    with CodecServer(codec, namespace=settings.temporal_namespace, port=0) as server:
        without_codec = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False
        )
        # The CLI replaces {namespace} and sends X-Namespace itself.
        with_codec = subprocess.run(
            [*command, "--codec-endpoint", server.url + "/{namespace}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    await handle.terminate(reason="test finished")

    assert without_codec.returncode == 0, without_codec.stderr
    assert CUSTOMER_EMAIL not in without_codec.stdout
    assert with_codec.returncode == 0, with_codec.stderr
    assert f"input[0].customer.email: {CUSTOMER_EMAIL}" in with_codec.stdout
    assert f"userMetadata.summary: Summary for {CUSTOMER_NAME}" in with_codec.stdout


def test_codec_server_command_needs_a_key(tmp_path: Path) -> None:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PAYLOAD_", "TEMPORAL_"))
    }
    project = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(project / "codec.py"), "serve", "--port", "0"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "PAYLOAD_ENCRYPTION_KEY and PAYLOAD_DECRYPTION_KEYS are both unset" in (
        result.stderr
    )
