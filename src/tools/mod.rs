pub mod bench;
pub mod capture;
pub mod chaos;
pub mod fuzz;
pub mod inject;
pub mod mqtt;
