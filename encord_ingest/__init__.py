"""encord-ingest: bulk-register cloud-bucket data into Encord."""
