"""The work behind Nightshift's tasks, as plain functions that know nothing of the queue (no huey, no app).

Modules: `mail` (e-mail batches over SMTP), `webhooks` (signed deliveries), `files` (thumbnails), `api_pull`
(resumable paginated pulls), `records` (bulk upserts), `primes` (long computation with progress),
`checksums`; shared: `errors`, `http`, `db`, `backoff`, `ratelimit`.
Failures meant for the queue are `errors.PermanentError` (do not retry) or `errors.TemporaryError` (retry).
"""
