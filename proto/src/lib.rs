//! fleet's wire format and the few types every part shares.
//!
//! `v1` is the generated gRPC code (committed; `tests/bootstrap.rs` keeps it
//! fresh). Only gRPC layers touch it: the rest of the code works on the
//! domain types in `spec` and converts at the edge.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!("gen/fleet.v1.rs");

    /// Encoded file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/fleet_descriptor.bin");

    /// The method names of `fleet.v1.<service>`, read from the descriptor
    /// set: role tables check against it that no RPC ships undecided.
    pub fn service_methods(service: &str) -> Vec<String> {
        use prost::Message;
        /// Just enough of descriptor.proto to list a service's methods.
        #[derive(Clone, PartialEq, prost::Message)]
        struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct FileDescriptorProto {
            #[prost(message, repeated, tag = "6")]
            service: Vec<ServiceDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct ServiceDescriptorProto {
            #[prost(string, optional, tag = "1")]
            name: Option<String>,
            #[prost(message, repeated, tag = "2")]
            method: Vec<MethodDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct MethodDescriptorProto {
            #[prost(string, optional, tag = "1")]
            name: Option<String>,
        }
        let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("the committed descriptor set decodes");
        set.file
            .iter()
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name.as_deref() == Some(service))
            .flat_map(|s| s.method.iter().filter_map(|m| m.name.clone()))
            .collect()
    }
}

pub mod authz;
pub mod daemon;
pub mod identity;
#[cfg(feature = "pki")]
pub mod pki;
pub mod spec;
pub mod tls;
pub mod toml_error;
pub mod unix;
