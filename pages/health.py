"""Health page: the run's findings (which failure mode, how bad, the fix) with links to the evidence."""

import json

import streamlit as st

from app import state, widgets
from opd_core.diagnostics import format_report

SEVERITY = {"critical": (":red[:material/error:]", "Critical"), "warning": (":orange[:material/warning:]", "Warning"),
            "info": (":blue[:material/info:]", "Info")}

widgets.header("Health", "Which failure mode does this run suffer from? Each finding names its evidence and a fix.")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
report = state.health_report(run.path)
findings = sorted(report.findings, key=lambda f: list(SEVERITY).index(f.severity) if f.severity in SEVERITY else 9)

counts = {s: sum(f.severity == s for f in findings) for s in SEVERITY}
c = st.columns(3)
for col, (sev, (icon, name)) in zip(c, SEVERITY.items()):
    col.metric(f"{icon} {name}", counts[sev])
if not findings:
    st.success("No findings: nothing in this run's logs points to a failure mode.", icon=":material/check_circle:")

for finding in findings:
    icon, name = SEVERITY.get(finding.severity, (":material/circle:", finding.severity))
    with st.container(border=True):
        st.markdown(f"##### {icon} {finding.title}")
        st.caption(f"{name} · {finding.mode}")
        st.markdown(f"**Fix:** {finding.fix}")
        with st.expander("Evidence"):
            st.json(json.loads(json.dumps(finding.evidence, default=str)))
        widgets.link_to(finding.page, run, f"See the evidence on {finding.page}")

st.download_button("Download report (text)", format_report(report), file_name=f"{run.run_id}-health.txt",
                   mime="text/plain")
