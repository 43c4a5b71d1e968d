"""The Files API's parts: records, their Redis store, blob storage, uploads and format checks."""
