//! virtio devices over `virtio-drivers`: the HAL (`hal`), the two NICs as netstack ports
//! (`net`) and the control channel (`console`).

pub mod console;
pub mod hal;
pub mod net;
