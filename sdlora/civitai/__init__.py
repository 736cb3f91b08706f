"""Civitai: look a LoRA up by its file hash, download one by URL or id (docs/civitai.md).

`settings` (base URL, API token, offline switch, NSFW level; the user settings file), `errors` (one type per
way a request fails), `client` (the HTTP client: timeouts, retries, the token), `misses` (hashes Civitai does
not know, remembered for a week), `lookup` (hash -> `<stem>.civitai.info`, `<stem>.json`, preview; folder
scans), `names` (file names and folders of downloads), `download` (streamed, resumed, hash-checked).
"""
