"""The data stage: read -> normalize -> filter -> dedup -> write shards + report."""

from fastlm.data.records import BadRecord, DataError, ErrorLog, Record

__all__ = ["BadRecord", "DataError", "ErrorLog", "Record"]
