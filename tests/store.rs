//! End-to-end tests of the model store: create, list, show, cp, rm, hostile files.
