"""Networking: loopback, user-mode networking (pasta, slirp4netns), published ports, egress rules."""
