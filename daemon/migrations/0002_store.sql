-- The model store's catalog. Blob files live in <state>/blobs/sha256-<hex>; these tables say which
-- blobs exist, which manifests (models) use them, which names (tags) point at which manifest, and
-- who pulled what when. A blob row is written only after its file is complete and verified.

CREATE TABLE blobs (
    digest TEXT PRIMARY KEY NOT NULL CHECK (length(digest) = 71 AND substr(digest, 1, 7) = 'sha256:'),
    size INTEGER NOT NULL CHECK (size >= 0),
    -- 0 when the start-up check found the file missing or of the wrong size.
    present INTEGER NOT NULL DEFAULT 1,
    added_at INTEGER NOT NULL,
    -- For GGUF blobs (model, adapter, projector): what `hyperctl show` and the runners need.
    architecture TEXT,
    parameter_count INTEGER,
    context_length INTEGER,
    embedding_length INTEGER,
    quantization TEXT
) STRICT;

-- A manifest is a model: its id is the sha256 of `body`.
CREATE TABLE manifests (
    digest TEXT PRIMARY KEY NOT NULL CHECK (length(digest) = 71 AND substr(digest, 1, 7) = 'sha256:'),
    body BLOB NOT NULL,
    -- Total bytes of its blobs.
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- The references that keep blobs alive: a blob goes when no manifest layer refers to it.
CREATE TABLE manifest_layers (
    manifest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
    -- -1 for the config blob, then the layers in order.
    position INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    blob TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (manifest, position)
) STRICT;
CREATE INDEX manifest_layers_by_blob ON manifest_layers(blob);

-- Names. `name` is canonical: host/namespace/model:tag.
CREATE TABLE tags (
    name TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
    manifest TEXT NOT NULL REFERENCES manifests(digest),
    -- Where it came from: a registry host, "hf.co", a URL, "create" or "copy".
    source TEXT NOT NULL,
    uid INTEGER NOT NULL,
    user TEXT NOT NULL,
    modified_at INTEGER NOT NULL
) STRICT;
CREATE INDEX tags_by_manifest ON tags(manifest);

-- Who pulled or created what, and how it ended.
CREATE TABLE store_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    name TEXT NOT NULL,
    uid INTEGER NOT NULL,
    user TEXT NOT NULL,
    manifest TEXT,
    outcome TEXT NOT NULL,
    at INTEGER NOT NULL
) STRICT;
