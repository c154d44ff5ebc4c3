"""protos/recserve/inference is wire-compatible with the protocol Triton's client speaks.

Our .proto files are our own text; what must match is every message, field name, number, type and label,
every enum value and every method. tritonclient's generated code is the reference: it is what the client
puts on the wire.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FileDescriptor

from recserve.inference import grpc_service_pb2, model_config_pb2
from tests.triton_client import import_tritonclient

grpcclient, _ = import_tritonclient()
SERVICE = "GRPCInferenceService"


def messages(*files: FileDescriptor) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(message: Descriptor) -> None:
        found[message.full_name] = message
        for nested in message.nested_types:
            walk(nested)

    for file in files:
        for message in file.message_types_by_name.values():
            walk(message)
    return found


def field_signature(field) -> tuple:
    referenced = field.message_type or field.enum_type
    oneof = field.containing_oneof.name if field.containing_oneof else None
    return field.number, field.type, field.is_repeated, referenced and referenced.full_name, oneof


def test_every_field_has_the_protocols_number_and_type() -> None:
    theirs = messages(grpcclient.service_pb2.DESCRIPTOR, grpcclient.model_config_pb2.DESCRIPTOR)
    ours = messages(grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR)
    assert set(ours) <= set(theirs), f"messages the protocol lacks: {sorted(set(ours) - set(theirs))}"
    for name, message in ours.items():
        for field in message.fields:
            reference = theirs[name].fields_by_name.get(field.name)
            assert reference is not None, f"{name}.{field.name} is not in the protocol"
            assert field_signature(field) == field_signature(reference), f"{name}.{field.name} differs"


def test_the_service_file_defines_every_message_of_the_protocol() -> None:
    theirs = messages(grpcclient.service_pb2.DESCRIPTOR)
    ours = messages(grpc_service_pb2.DESCRIPTOR)
    assert set(theirs) == set(ours)
    for name, message in theirs.items():
        assert set(message.fields_by_name) == set(ours[name].fields_by_name), name


def test_enums_match() -> None:
    for name, enum in model_config_pb2.DESCRIPTOR.enum_types_by_name.items():
        reference = grpcclient.model_config_pb2.DESCRIPTOR.enum_types_by_name[name]
        assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in reference.values]
    for name, message in messages(model_config_pb2.DESCRIPTOR).items():
        reference = messages(grpcclient.model_config_pb2.DESCRIPTOR)[name]
        for enum in message.enum_types:
            expected = [(v.name, v.number) for v in reference.enum_types_by_name[enum.name].values]
            assert [(v.name, v.number) for v in enum.values] == expected, f"{name}.{enum.name}"


def test_every_method_of_the_service() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name[SERVICE]
    theirs = grpcclient.service_pb2.DESCRIPTOR.services_by_name[SERVICE]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"

    def signature(method) -> tuple:
        return (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        )

    assert {m.name: signature(m) for m in ours.methods} == {m.name: signature(m) for m in theirs.methods}


def test_a_request_survives_the_round_trip_between_the_two() -> None:
    request = grpc_service_pb2.ModelInferRequest(model_name="recommender", id="x", raw_input_contents=[b"ab"])
    tensor = request.inputs.add(name="user_id", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append(b"user-1")
    request.parameters["priority"].uint64_param = 2
    decoded = grpcclient.service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert decoded.inputs[0].contents.bytes_contents == [b"user-1"]
    assert decoded.parameters["priority"].uint64_param == 2
    assert decoded.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)
