"""The audit trail's tamper evidence: the hash chain, signed checkpoints, and the auditor.

- chain: every line carries `prev`, the SHA-256 of the line before it (`Chain`);
- checkpoints: `<log>.checkpoints`, signed records of how many lines there were
  and the hash of the last (`CheckpointWriter`, `Checkpoint`);
- walk: `ChainWalk` follows the chain through a log's blocks and notes where it breaks;
- verify: `audit()` walks a log and its checkpoints and says whether they were altered.
"""
