// The load generator's native transport: unary calls through grpc++'s callback API, completions handed to
// Python in bulk.
//
// Why: a grpc.aio unary call costs the calling process ~300 us of CPU on 2 cores, and the load generator
// shares the cores with the server it measures. grpc++ issues and completes a call in a fraction of that on
// its own threads; Python only starts calls and, once per wake-up, takes every completion that arrived.

#include "event_queue.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

struct Completion {
  uint64_t tag;
  int code;
  std::string details;
};

struct PendingCall {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

class Channel {
 public:
  Channel(const std::string& target, const std::vector<std::pair<std::string, int>>& int_options,
          const std::vector<std::pair<std::string, std::string>>& string_options) {
    grpc::ChannelArguments arguments;
    for (const auto& [key, value] : int_options) arguments.SetInt(key, value);
    for (const auto& [key, value] : string_options) arguments.SetString(key, value);
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), arguments);
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
  }

  ~Channel() { CancelAndWait(); }

  // Connect; true once the channel is READY within `timeout_s`.
  bool wait_ready(double timeout_s) {
    py::gil_scoped_release release;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6));
    while (true) {
      grpc_connectivity_state state = channel_->GetState(true);
      if (state == GRPC_CHANNEL_READY) return true;
      if (!channel_->WaitForStateChange(state, deadline)) return false;
    }
  }

  // Start one call of `method` ("/pkg.Service/Method") with a serialized request; its completion is
  // reported by `drain` under `tag`.
  void start(uint64_t tag, const std::string& method, const std::string& payload,
             std::optional<double> timeout_s, const std::vector<std::pair<std::string, std::string>>& metadata) {
    auto pending = std::make_shared<PendingCall>();
    if (timeout_s) {
      pending->context.set_deadline(std::chrono::system_clock::now() +
                                    std::chrono::nanoseconds(static_cast<int64_t>(*timeout_s * 1e9)));
    }
    for (const auto& [key, value] : metadata) pending->context.AddMetadata(key, value);
    grpc::Slice slice(payload);
    pending->request = grpc::ByteBuffer(&slice, 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_flight_[tag] = pending;
    }
    stub_->UnaryCall(&pending->context, method, grpc::StubOptions(), &pending->request, &pending->response,
                     [this, tag, pending](grpc::Status status) {
                       queue_.Push(Completion{tag, static_cast<int>(status.error_code()),
                                              status.error_message()});
                       Forget(tag);
                     });
  }

  // Cancel one call (its completion still arrives, as CANCELLED).
  void cancel(uint64_t tag) {
    std::shared_ptr<PendingCall> pending;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = in_flight_.find(tag);
      if (found == in_flight_.end()) return;
      pending = found->second;
    }
    pending->context.TryCancel();  // unlocked: the completion may run inline and take the lock
  }

  int event_fd() const { return queue_.fd(); }

  // Every completion since the last drain, as (tag, status code, details) tuples.
  py::list drain() {
    std::vector<Completion> completions = queue_.Take();
    py::list out(completions.size());
    for (size_t i = 0; i < completions.size(); ++i) {
      const Completion& done = completions[i];
      out[i] = py::make_tuple(done.tag, done.code, done.details);
    }
    return out;
  }

  // Cancel every call in flight and wait until grpc++ has finished with all of them.
  void close() {
    py::gil_scoped_release release;
    CancelAndWait();
  }

 private:
  void Forget(uint64_t tag) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_.erase(tag);
    if (in_flight_.empty()) drained_.notify_all();
  }

  void CancelAndWait() {
    std::vector<std::shared_ptr<PendingCall>> cancelling;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [tag, pending] : in_flight_) cancelling.push_back(pending);
    }
    for (auto& pending : cancelling) pending->context.TryCancel();
    std::unique_lock<std::mutex> lock(mutex_);
    drained_.wait(lock, [this] { return in_flight_.empty(); });
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  recserve::EventQueue<Completion> queue_;
  std::mutex mutex_;
  std::condition_variable drained_;
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> in_flight_;
};

}  // namespace

PYBIND11_MODULE(_native, module) {
  module.doc() = "grpc++ unary calls for the load generator, completions handed over in bulk.";
  py::class_<Channel>(module, "Channel")
      .def(py::init<const std::string&, const std::vector<std::pair<std::string, int>>&,
                    const std::vector<std::pair<std::string, std::string>>&>())
      .def("wait_ready", &Channel::wait_ready)
      .def("start", &Channel::start)
      .def("cancel", &Channel::cancel)
      .def("event_fd", &Channel::event_fd)
      .def("drain", &Channel::drain)
      .def("close", &Channel::close);
}
