"""Test support code: small real servers standing in for remote services (never for the tools)."""
