"""The app's tabs, one module each, in the order the page shows them.

Every tab module has ``build(ctx)`` (creates its components inside the open ``gr.Tab`` and wires
their events) and may have ``prepare(ctx)`` (work done once at launch: banks, datasets); beside
them, plain functions (numpy, str and dict in and out, no gradio objects) that the unit tests
call. ``apps.build_app`` imports them by the names below.
"""

from __future__ import annotations

from typing import NamedTuple


class Tab(NamedTuple):
    label: str  # what the tab says
    elem_id: str  # the gr.Tab's element id (the browser test finds it by this)
    module: str  # the module with prepare(ctx) and build(ctx)


TABS: tuple[Tab, ...] = (
    Tab("Generate", "tab-generate", "apps.tabs.generate"),
    Tab("Compare", "tab-compare", "apps.tabs.compare"),
    Tab("Quiz", "tab-quiz", "apps.tabs.quiz"),
    Tab("Read an X-ray", "tab-read", "apps.tabs.read_xray"),
    Tab("Report assistant", "tab-report", "apps.tabs.report"),
)
