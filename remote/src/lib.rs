//! Object storage for layer files and timeline indexes (upload, download,
//! delete queues). Empty until the remote-storage issue: the backup worker
//! already runs, with nothing to upload.
