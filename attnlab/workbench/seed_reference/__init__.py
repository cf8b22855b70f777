"""The seeds' own modules, literal, kept as the references attnlab's members are tested and benchmarked against."""
