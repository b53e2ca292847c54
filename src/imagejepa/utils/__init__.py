"""Small shared helpers that know nothing of I-JEPA: CPU capabilities, ..."""
