//! Shared code of the command-line tools (benchmarks, inspection).
