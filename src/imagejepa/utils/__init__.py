"""Small shared helpers that know nothing of I-JEPA: CPU capabilities (cpu), atomic files and
content hashes (files), independent random streams from one seed (seeds), the stop signals
(signals)."""
