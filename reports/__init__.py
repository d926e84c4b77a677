"""Reports read from the ticket database: a ticket's story, compliance, hours.

Each report reads the store's tables and prints a table, writes CSV and
writes a self-contained HTML page whose charts are inline SVG.
"""
