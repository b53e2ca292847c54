"""Small shared helpers that know nothing of I-JEPA: CPU capabilities (cpu), atomic files and
content hashes (files), the stop signals (signals)."""
