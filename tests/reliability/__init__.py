"""The reliability and security campaign (issue 4): faults, races and hostile input."""
