//! Strait coordinator: the control plane.
