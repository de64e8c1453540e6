"""Projects: operations with their permission checks, and the local project manager."""
