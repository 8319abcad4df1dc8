//! Empty: the models are in tests/models.rs.
