"""The items of `eos-probe bench`, in the order they run (no imports: the CLI lists them without loading torch)."""

ITEMS = ("zo", "microbatch", "fo", "queries", "sweep", "hvp", "cocd", "loop", "probe")
