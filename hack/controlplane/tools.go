//go:build tools

// Package controlplane exists only to hold this module's pinned requirements.
package controlplane
