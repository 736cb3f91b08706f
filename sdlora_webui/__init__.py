"""sdlora's Gradio web UI. `sdlora_webui.app.build_app(state)` builds it; `sdlora webui` launches it.

Layout: `app.py` assembles the tabs; `tabs/*_tab.py` each hold `create_ui()` (layout and wiring) and
plain module-level handler functions (UI values in, one library call, UI values out) that the tests
call directly. `state.py` is the per-app state object, `jobs.py` the one-at-a-time training queue,
`paths.py` confines typed paths, `uploads.py` checks uploads.
"""
