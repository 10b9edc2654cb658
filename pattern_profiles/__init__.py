"""Per-model head profiles (JSON data files); see INDEX.json and SOURCE.md."""
