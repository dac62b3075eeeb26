"""The chaos suite: faults, cancellation and crashes against the router's guarantees."""
