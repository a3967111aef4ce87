//! Shared code of the command-line tools (benchmarks, inspection).

pub mod pagestream_client;
