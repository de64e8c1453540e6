"""The program that runs as a project: raw files over HOME and command execution."""
