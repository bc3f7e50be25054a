"""A small shop back office whose nightly settlement runs on loky workers."""
