"""Privacy mechanisms (``privfl.mechanisms``): local randomizers with their exact guarantees."""
