//! RideShare users and rides services (being written).
