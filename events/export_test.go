package events

// TestKey is the signing key of the external test package's events.
var TestKey = testKey
