"""Settings from flags and profiles, composed into a Spec; the project-profile trust rules."""
