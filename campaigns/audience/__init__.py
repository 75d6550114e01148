"""Contacts and the audience: CSV import, phone normalisation, one recipient row per contact."""
