//! End-to-end tests of pulling into the model store from the test registry.
