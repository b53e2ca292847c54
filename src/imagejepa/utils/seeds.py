"""Independent random streams from one seed: every random choice of a run is drawn from a
generator seeded with ``mix_seed(train.seed, step or epoch, stream, ...)``, so it depends on
nothing but those numbers (not on the process, the worker or what ran before)."""

MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser), for independent RNG streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & MASK64
        x ^= x >> 29
    return x & ((1 << 63) - 1)
