"""swarm: the social part of Loopy; never imports torch.

Wire format, policy and plumbing live apart; this map names each class's file.

Wire format (pure functions, no I/O):
- `patch.py`: `make_patch`, `parse_patch`, `format_patch`, `apply_patch`, `patch_paths`,
  `merge3`; `PatchError`, `MergeConflict` - unified diffs of train.py (the one parser),
  strict apply, three-way merge.
- `identity.py`: `NodeIdentity` (ed25519 key in `<home>/node.key`, mode 0600; signing;
  libp2p peer id), `peer_id_from_public_key`, `IdentityError`.
- `records.py`: `Record`, `decode_envelope`, `make_experiment`, `make_attestation`,
  `make_announce`, `result_map`, `RecordError` - PROTOCOL.md's signed envelopes and bodies.
- `conventions.py`: `TOPIC_RE`, `GENOME_RE`, `baseline_runs`, `root_score` - the names
  records carry, the baseline runs and the genome's own score in an arena.

Policy (no network):
- `trust.py`: `TrustPolicy`, `TrustRules` - what counts as verified, per-peer reputation.
- `ratelimit.py`: `RateLimiter`, `RecordLimits`, `RecordRateLimit` - token buckets per
  peer: sync requests, and valid records accepted per minute per forwarder and author.
- `descriptions.py`: `working_on`, `baseline_desc`, `edit_desc`, `verify_desc`,
  `port_desc`, `merge_desc` and their readers - the text conventions of descriptions and
  announces, each with one home.
- `announces.py`: `AnnouncePolicy`, `AnnounceLimits` - announces as weighted, capped hints
  (never vetoes), judged by local receipt time.
- `admission.py`: `StorageBudgets`, `Admission`, `Ingest` - what strangers may add to the
  store per hour (per sending peer, per author, all together), and the way in for peers'
  records (budget, then the store or the quarantine).
- `retention.py`: `RetentionPolicy`, `pins`, `prune` - what is kept forever, and pruning
  strangers' unreferenced records down to a quota.

State (SQLite and text, no network):
- `store.py`: `Store` (WAL, migrations, queries; a read-only mode), `Peer`, `StoreError`.
- `lineage.py`: `Lineage` (train.py of any record, cached), `LineageError`,
  `MissingAncestor`, `BrokenLineage`.
- `export.py`: `export_patch`, `export_source`, `export_series`, `export_tsv`,
  `log_lines`, `test_delta` - lineages for git, patch, autoresearch's results.tsv and
  terminals, with each step's val and held-out test deltas.
- `quarantine.py`: `Quarantine` - records whose parents are unknown wait here, bounded,
  until the parents arrive or they expire.
- `heads.py`: `HeadsIndex` - the sync server's heads, kept current insert by insert.

Plumbing (libp2p, trio):
- `host.py`: `open_host`, `build_host` - TCP + noise + yamux host keyed by the node seed.
- `gossip.py`: `Gossip`, `RecordValidator`, `PeerGuard`, `forgive_ignored` - gossipsub
  topics, validation, IGNORE for records over a rate limit.
- `sync.py`: `SyncServer`, `SyncSession`, `catch_up` - `/loopy/sync/1.0.0`.
- `discovery.py`: `Discovery`, `PeerBook` - bootstrap, peer book (the store), mDNS.
- `network.py`: `SwarmNode`, `open_swarm_node`, `serve_swarm` - all of the above composed
  for `node.py`.
"""
