"""privfl in a Flower app (see ../README.md)."""
