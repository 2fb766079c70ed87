"""Health page: the run's findings (which failure mode, how bad, the fix) with a picture of the evidence."""

import json

import streamlit as st

from app import evidence, state, widgets
from app.inert import md
from opd_core.diagnostics import format_report
from opd_core.diagnostics.health import severity_rank

SEVERITY = {"critical": (":red[:material/error:]", "Critical"), "warning": (":orange[:material/warning:]", "Warning"),
            "info": (":blue[:material/info:]", "Info")}

widgets.header("Health", "Which failure mode does this run suffer from? Each finding names its evidence and a fix.")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
report = widgets.guarded(run, state.health_report, run.path)
for damage in getattr(report, "problems", None) or []:  # readers skip a damaged file and name it; say so here
    st.warning(f"**{md(run.label)}**: {md(damage)}", icon=":material/broken_image:")
findings = sorted(report.findings, key=lambda f: severity_rank(f.severity))

counts = {s: sum(f.severity == s for f in findings) for s in SEVERITY}
c = st.columns(3)
for col, (sev, (icon, name)) in zip(c, SEVERITY.items()):
    col.metric(f"{icon} {name}", counts[sev])
if not findings:
    st.success("No findings: nothing in this run's logs points to a failure mode.", icon=":material/check_circle:")
for skipped in getattr(report, "skipped", None) or []:
    st.caption(f"Not checked: {md(skipped)}")

for i, finding in enumerate(findings):
    icon, name = SEVERITY.get(finding.severity, (":material/circle:", md(finding.severity)))
    with st.container(border=True):
        st.markdown(f"##### {icon} {md(finding.title)}")
        st.caption(f"{name} · {md(finding.mode)}")
        numbers = evidence.key_numbers(finding.evidence)
        if numbers:
            cols = st.columns(len(numbers))
            for col, (label, value) in zip(cols, numbers):
                col.metric(label, value)
        try:
            fig, how_to_read = evidence.figure(finding, run.path)
        except Exception as exc:  # noqa: BLE001 - a picture that cannot be drawn must not hide the finding
            fig, how_to_read = None, f"(no picture: {md(widgets.describe(exc))})"
        if fig is not None:
            widgets.chart(fig, how_to_read, key=f"health_fig:{i}")
        st.markdown(f"**Fix:** {md(finding.fix, None)}")
        with st.expander("Evidence (JSON)"):
            st.json(json.loads(json.dumps(finding.evidence, default=str)))
        target = evidence.page_title(finding)
        widgets.link_to(target, run, f"See the evidence on {target}")

st.download_button("Download report (text)", format_report(report), file_name=f"{run.run_id}-health.txt",
                   mime="text/plain")
