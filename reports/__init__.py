"""The presentation of results: pages and figures made from a run's tables (`actscale report`:
reports/report.py; docs/findings.md: reports/findings.py over the claims in reports/claims/).
Layered above storage/ (which reads and writes the tables and draws nothing): reports may import
storage, never workers or orchestrator; each figure or table is computed as data, then drawn."""
