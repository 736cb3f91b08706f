"""The Library tab's Civitai panel: fetch Civitai info by hash (the shown LoRA, or all), a card with what
Civitai says, and a download box with a queue (bytes, speed, time left) and Cancel. Thin over
`sdlora.civitai`; docs/civitai.md.

Hash lookups send a file's SHA-256 to a third party, so they wait for the user's consent, asked once (kept in
the user's Civitai settings file). Where requests go and with which token comes from the environment and that
file (`SDLORA_CIVITAI_URL`, `CIVITAI_API_TOKEN`, `SDLORA_OFFLINE`), as for `sdlora civitai`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.civitai.client import CivitaiClient
from sdlora.civitai.download import download
from sdlora.civitai.errors import CivitaiError
from sdlora.civitai.info import read_info, summary
from sdlora.civitai.lookup import lookup_file, scan
from sdlora.civitai.misses import MissMemory
from sdlora.civitai.names import DEFAULT_TEMPLATE
from sdlora.civitai.settings import hash_consent, load_settings, set_hash_consent
from sdlora.errors import SdloraError
from sdlora.filehash import FileHashCache
from sdlora.library import find_preview
from sdlora_webui.downloads import DownloadJob, DownloadQueue
from sdlora_webui.tabs.common import bound, guarded

QUEUE_COLUMNS = ["#", "what", "status", "bytes", "speed", "time left", "message"]
PRIVACY = """\
**Civitai.** *Fetch Civitai info* sends each file's SHA-256 hash (never the file, its name or its path) to
{url} and writes what Civitai knows beside the LoRA (`.civitai.info`, the notes' empty fields, a preview).
*Download* asks {url} for the model or version, then fetches the file from where Civitai sends it. An API token
(`CIVITAI_API_TOKEN` or `sdlora civitai token`) goes to {url} only.{offline}"""


def _settings():
    return load_settings()


def _client():
    return CivitaiClient(_settings())


def _stores(app):
    cache = Path(app.config.output_dir) / ".cache"
    return FileHashCache(cache / "file-hashes.json"), MissMemory(cache / "civitai-misses.json")


def privacy_text() -> str:
    settings = _settings()
    offline = " **Offline mode is on: nothing is sent.**" if settings.offline else ""
    return PRIVACY.format(url=settings.base_url, offline=offline)


def set_consent(allowed: bool) -> str:
    set_hash_consent(bool(allowed))
    return ("hash lookups allowed: file hashes may be sent to Civitai" if allowed
            else "hash lookups off: no file hash is sent to Civitai")


def _check_consent() -> None:
    if not hash_consent():
        raise SdloraError(f"hash lookups send each file's SHA-256 to Civitai ({_settings().base_url}); tick "
                          "\"Allow sending file hashes to Civitai\" first (asked once)")


def card(app, name: str) -> tuple[str, str | None]:
    """(markdown, preview path) of what Civitai said about library LoRA `name` ("" when nothing yet)."""
    if not (name or "").strip():
        return "", None
    path = app.library_path(name)
    version = read_info(path)
    if version is None:
        return f"*{name}: no Civitai info yet (Fetch Civitai info looks it up by hash)*", find_preview(path)
    found = summary(version)
    page = f"{_settings().base_url}/models/{found['model_id']}?modelVersionId={found['version_id']}"
    words = ", ".join(f"`{w}`" for w in found["trained_words"]) or "none listed"
    lines = [f"**Civitai: {found['model_name']}** · {found['version_name']}",
             f"base model: **{found['base_model'] or '?'}**", f"trigger words: {words}"]
    if found["tags"]:
        lines.append("tags: " + ", ".join(found["tags"][:12]))
    lines.append(f"[page on Civitai]({page})")
    return "\n\n".join(lines), find_preview(path)


def fetch_one(app, name: str) -> tuple[str, str | None, str]:
    """Look the shown LoRA up on Civitai: (card, preview, message)."""
    if not (name or "").strip():
        raise SdloraError("pick a LoRA in the list first")
    _check_consent()
    path = app.library_path(name)
    hashes, misses = _stores(app)
    with _client() as client:
        result = lookup_file(path, client, hashes, misses, refresh=True)  # the user asked: ask again
    hashes.save()
    misses.save()
    text, preview = card(app, name)
    return text, preview, f"{name}: {result.status}" + (f": {result.message}" if result.message else "")


def fetch_all(app) -> str:
    """Look every library LoRA without Civitai info up (4 requests at a time); a count per outcome."""
    _check_consent()
    hashes, misses = _stores(app)
    with _client() as client:
        results = scan(app.config.lora_dir, client, hashes, misses)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return "Civitai: " + (", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no LoRA files")


def run_download(app, job: DownloadJob) -> str:
    """One queued download into the library folder, reporting into `job`."""
    def progress(p) -> None:
        job.done, job.total, job.speed, job.eta = p.done, p.total, p.speed, p.eta


    hashes, _ = _stores(app)
    with _client() as client:  # a plain URL's file is looked up by hash only with the user's consent
        result = download(job.target, app.config.lora_dir, client, template=job.folder or "", hashes=hashes,
                          cancel=job.cancel, on_progress=progress, lookup_by_hash=hash_consent())
    hashes.save()
    where = result.path.relative_to(Path(app.config.lora_dir).resolve())
    return f"saved {where}" + "".join(f"; {note}" for note in result.notes)


def queue_by_hash(app, queue: DownloadQueue, hashes: list[str]) -> str:
    """Queue the Civitai versions of `hashes` (a recipe's missing LoRAs: A1111's short tensor hashes, which
    Civitai knows as AutoV3) for download into the library, by base-model folder. Asks Civitai about each hash,
    so it needs the user's consent like any hash lookup."""
    if not hashes:
        raise SdloraError("no missing LoRA with a hash: rebuild from an image first")
    _check_consent()
    queued, notes = [], []
    with _client() as client:
        for digest in hashes:
            try:
                version = client.version_by_hash(digest)
            except CivitaiError as err:
                notes.append(f"{digest}: {err}")
                continue
            queued.append(f"#{queue.submit(str(version.get('id')), DEFAULT_TEMPLATE).id} {digest}")
    text = f"queued {len(queued)} download(s) by hash ({', '.join(queued)}); the Library tab's Civitai panel shows them"
    return text + ("; " + "; ".join(notes) if notes else "")


def queue_rows(queue: DownloadQueue) -> list[list]:
    rows = []
    for job in queue.snapshot():
        size = _mb(job.done) + (f" / {_mb(job.total)}" if job.total else "")
        speed = f"{_mb(job.speed)}/s" if job.speed else ""
        eta = f"{job.eta:.0f} s" if job.eta is not None and job.status == "downloading" else ""
        rows.append([job.id, job.target, job.status, size, speed, eta, job.message])
    return rows


def _mb(count: float) -> str:
    return f"{count / 1e6:.2f} MB"


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app, library: dict[str, Any]) -> dict[str, Any]:
    """The panel, under the Library tab's details; `library` is that tab's components (its shown LoRA, its
    pick, its list refresh), which the panel's results update."""
    c: dict[str, Any] = {"queue_state": DownloadQueue(lambda job: run_download(app, job))}
    with gr.Accordion("Civitai: info by hash, downloads", open=True, elem_id="civ-panel"):
        c["privacy"] = gr.Markdown(privacy_text(), elem_id="civ-privacy")
        with gr.Row():
            c["consent"] = gr.Checkbox(hash_consent(), label="Allow sending file hashes to Civitai",
                                       elem_id="civ-consent", scale=2)
            c["fetch_one"] = gr.Button("Fetch Civitai info", elem_id="civ-fetch-one", scale=1)
            c["fetch_all"] = gr.Button("Fetch Civitai info for all", elem_id="civ-fetch-all", scale=1)
        c["message"] = gr.Markdown(elem_id="civ-message")
        with gr.Row():
            c["card"] = gr.Markdown(elem_id="civ-card")
            c["preview"] = gr.Image(label="Preview", type="filepath", interactive=False, height=180,
                                    elem_id="civ-preview")
        with gr.Row():
            c["target"] = gr.Textbox(label="Download: a Civitai URL, a version id, model:ID or an https URL",
                                     elem_id="civ-target", scale=3)
            c["folder"] = gr.Textbox(DEFAULT_TEMPLATE, label="Folder in the library", elem_id="civ-folder", scale=1,
                                     info="{base_model}, {model_name}, {version_id}, ...")
            c["download"] = gr.Button("Download", elem_id="civ-download", scale=1)
            c["cancel"] = gr.Button("Cancel", elem_id="civ-cancel", scale=1)
        c["queue"] = gr.Dataframe(headers=QUEUE_COLUMNS, interactive=False, label="Downloads", elem_id="civ-queue")
        c["seen"] = gr.State(0)  # downloads finished when this page last refreshed the library
        c["timer"] = gr.Timer(1.0, active=False)  # ticks while downloads are queued or running
    _wire(app, c, library)
    return c


def _wire(app, c: dict[str, Any], library: dict[str, Any]) -> None:
    queue: DownloadQueue = c["queue_state"]
    listing = library["listing"]  # search, sort and the filters
    relist = bound(library["relist"], app)
    c["consent"].change(guarded(set_consent), c["consent"], c["message"], api_name="civitai_consent")
    library["pick"].change(bound(card, app), library["pick"], [c["card"], c["preview"]], api_name="civitai_card")
    # the details panel shows the notes the lookup may have filled: reloaded, so a later "Save notes" keeps them
    c["fetch_one"].click(bound(fetch_one, app), library["shown"], [c["card"], c["preview"], c["message"]],
                         api_name="civitai_fetch").success(relist, listing, library["refresh_outputs"]).success(
        bound(library["show_details"], app), library["shown"], library["details_outputs"])
    c["fetch_all"].click(bound(fetch_all, app), None, c["message"], api_name="civitai_fetch_all").success(
        relist, listing, library["refresh_outputs"])

    def submit(target: str, folder: str):
        job = queue.submit(target, folder)
        return queue_rows(queue), f"download #{job.id} queued: {job.target}", gr.Timer(active=True)

    def cancel():
        count = queue.cancel()
        return queue_rows(queue), (f"cancelling {count} download(s); a started one keeps its .part to resume"
                                   if count else "nothing to cancel"), gr.Timer(active=True)

    def tick(seen: int, *listed):
        """The queue's rows, the library list too when a download ended since the last tick; the timer stops
        once nothing is queued or running."""
        finished = queue.finished
        busy = queue.busy()
        listing_update = ([gr.skip()] * len(library["refresh_outputs"]) if finished == seen
                          else list(library["relist"](app, *listed)))
        return [queue_rows(queue), finished, gr.Timer(active=busy or finished != seen), *listing_update]

    queue_outputs = [c["queue"], c["message"], c["timer"]]
    c["download"].click(guarded(submit), [c["target"], c["folder"]], queue_outputs, api_name="civitai_download")
    c["cancel"].click(guarded(cancel), None, queue_outputs, api_name="civitai_cancel")
    c["timer"].tick(guarded(tick), [c["seen"], *listing],
                    [c["queue"], c["seen"], c["timer"], *library["refresh_outputs"]], show_progress="hidden")
