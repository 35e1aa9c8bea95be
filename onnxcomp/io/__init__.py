"""Files: reading and writing models safely (atomic, validated), and input hygiene."""
