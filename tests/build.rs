//! Generates the client and server of the gRPC service the protocol tests
//! run through the agent (`tests/support/grpc.rs`). tonic-build's manual
//! builder writes the same stubs `protoc` + tonic-build would, from a
//! description in Rust, so building the tests needs no protoc; the messages
//! are prost structs written by hand in `support/grpc.rs`.

fn main() {
    let method =
        |name: &str, route: &str, input: &str, output: &str, client_streaming, server_streaming| {
            let mut m = tonic_build::manual::Method::builder()
                .name(name)
                .route_name(route)
                .input_type(input)
                .output_type(output)
                .codec_path("tonic_prost::ProstCodec");
            if client_streaming {
                m = m.client_streaming();
            }
            if server_streaming {
                m = m.server_streaming();
            }
            m.build()
        };
    let echo = tonic_build::manual::Service::builder()
        .name("Echo")
        .package("jwtgate.test")
        .method(method(
            "say",
            "Say",
            "crate::support::grpc::Msg",
            "crate::support::grpc::Msg",
            false,
            false,
        ))
        .method(method(
            "count",
            "Count",
            "crate::support::grpc::Msg",
            "crate::support::grpc::Msg",
            false,
            true,
        ))
        .method(method(
            "join",
            "Join",
            "crate::support::grpc::Msg",
            "crate::support::grpc::Msg",
            true,
            false,
        ))
        .method(method(
            "admin",
            "Admin",
            "crate::support::grpc::Msg",
            "crate::support::grpc::Msg",
            false,
            false,
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[echo]);
}
