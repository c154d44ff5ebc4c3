// The load generator's native transport.
//
// Why: a grpc.aio unary call costs the calling process ~300 us of CPU on 2 cores, and the load generator
// shares the cores with the server it measures. Two ways to run calls:
// - Channel: Python starts each call; grpc++'s callback API runs it, and Python takes every completion since
//   it last looked in one `drain()`. Any request plan (templated payloads, --rps pacing) works this way.
// - ClosedLoop: for the common plan with fixed payloads and no pacing, the whole closed loop runs in C++:
//   one thread polls a completion queue and starts each worker's next call the moment its last one ends.
//   No Python and no thread hand-off per call.

#include "event_queue.h"
#include "grpc_tuning.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <thread>
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

// Plaintext, or TLS with these PEM roots (empty: the system's) and, for mutual TLS, a client key and chain.
std::shared_ptr<grpc::ChannelCredentials> Credentials(bool tls, const std::string& root_pem,
                                                      const std::string& key_pem, const std::string& cert_pem) {
  if (!tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = root_pem;
  options.pem_private_key = key_pem;
  options.pem_cert_chain = cert_pem;
  return grpc::SslCredentials(options);
}

class Channel {
 public:
  // `grpc.ssl_target_name_override` among the string options replaces the host name TLS verifies.
  Channel(const std::string& target, const std::vector<std::pair<std::string, int>>& int_options,
          const std::vector<std::pair<std::string, std::string>>& string_options, bool tls,
          const std::string& root_pem, const std::string& key_pem, const std::string& cert_pem) {
    grpc::ChannelArguments arguments;
    for (const auto& [key, value] : int_options) arguments.SetInt(key, value);
    for (const auto& [key, value] : string_options) arguments.SetString(key, value);
    channel_ = grpc::CreateCustomChannel(target, Credentials(tls, root_pem, key_pem, cert_pem), arguments);
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

  friend class ClosedLoop;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  recserve::EventQueue<Completion> queue_;
  std::mutex mutex_;
  std::condition_variable drained_;
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> in_flight_;
};

int64_t MonotonicNs() {  // the clock behind Python's time.perf_counter_ns on Linux
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

// One finished call: when it ended, how long it took, its status code and message.
struct CallRecord {
  int64_t end_ns;
  int64_t latency_ns;
  int code;
  std::string details;
};

// What calls still in flight when the run is stopped become.
enum class StopMode { kClose, kIgnore, kWait };

// `concurrency` workers, each with one call in flight at a time, spread over the channels; request N sends
// payloads[N % payloads.size()]. Runs until `total` calls were issued (0 = no limit) or `stop` is called.
// With `rps` > 0, request N goes out no earlier than start + N / rps (ghz's --rps): a free worker whose
// request is not due yet waits on an alarm, so with workers enough the offered rate is fixed whatever the
// server answers (an open loop).
class ClosedLoop {
 public:
  ClosedLoop(std::vector<Channel*> channels, std::string method, const std::vector<py::bytes>& payloads,
             std::vector<std::pair<std::string, std::string>> metadata, int concurrency, int64_t total,
             std::optional<double> timeout_s, double rps = 0.0)
      : method_(std::move(method)),
        metadata_(std::move(metadata)),
        total_(total),
        timeout_ns_(timeout_s ? static_cast<int64_t>(*timeout_s * 1e9) : 0),
        interval_ns_(rps > 0 ? 1e9 / rps : 0.0),
        workers_(concurrency) {
    if (channels.empty() || payloads.empty() || concurrency < 1) {
      throw std::invalid_argument("a closed loop needs a channel, a payload and concurrency >= 1");
    }
    for (const py::bytes& payload : payloads) {
      std::string bytes = payload;
      grpc::Slice slice(bytes);
      payloads_.emplace_back(&slice, 1);
    }
    // One completion queue, polled by a thread of its own, per connection (up to the cores): a single
    // poller fell behind reading thousands of answers, so calls expired in the client, not the server.
    size_t cores = std::max<size_t>(1, std::thread::hardware_concurrency());
    size_t pollers = std::min<size_t>(channels.size(), cores);
    for (size_t i = 0; i < pollers; ++i) queues_.push_back(std::make_unique<grpc::CompletionQueue>());
    for (size_t i = 0; i < workers_.size(); ++i) {
      workers_[i].channel = channels[i % channels.size()];
      workers_[i].queue = queues_[(i % channels.size()) % pollers].get();
    }
  }

  // Run to the end (blocking, without the GIL); returns the start and end times in perf_counter ns.
  std::pair<int64_t, int64_t> run() {
    py::gil_scoped_release release;
    int64_t started = MonotonicNs();
    started_ns_ = started;
    std::vector<int> in_flight(queues_.size(), 0);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Worker& worker : workers_) {
        if (!StartLocked(worker)) break;
        ++in_flight[QueueIndex(worker.queue)];
      }
    }
    std::vector<std::thread> threads;
    for (size_t i = 1; i < queues_.size(); ++i) {
      threads.emplace_back([this, i, &in_flight] { Poll(i, in_flight[i]); });
    }
    Poll(0, in_flight[0]);
    for (std::thread& thread : threads) thread.join();
    int64_t ended = MonotonicNs();
    void* tag;
    bool ok;
    for (auto& queue : queues_) {
      queue->Shutdown();
      while (queue->Next(&tag, &ok)) {
      }
    }
    return {started, ended};
  }

  // Serve one completion queue until none of its workers has a call or an alarm left.
  void Poll(size_t index, int in_flight) {
    void* tag;
    bool ok;
    while (in_flight > 0 && queues_[index]->Next(&tag, &ok)) {
      Worker& worker = *static_cast<Worker*>(tag);
      int64_t end_ns = MonotonicNs();
      std::lock_guard<std::mutex> lock(mutex_);
      if (worker.waiting) {  // its alarm: the request it holds is due now (or the run was stopped)
        worker.waiting = false;
        if (!SendLocked(worker)) --in_flight;
        continue;
      }
      RecordLocked(worker, end_ns);
      if (!StartLocked(worker)) --in_flight;
    }
  }

  size_t QueueIndex(const grpc::CompletionQueue* queue) const {
    for (size_t i = 0; i < queues_.size(); ++i) {
      if (queues_[i].get() == queue) return i;
    }
    return 0;
  }

  // No new calls; calls in flight are cancelled and reported as cancelled (close), cancelled and left
  // out (ignore), or awaited (wait). Safe from any thread, more than once.
  void stop(const std::string& mode) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    stop_mode_ = mode == "close" ? StopMode::kClose : mode == "ignore" ? StopMode::kIgnore : StopMode::kWait;
    for (Worker& worker : workers_) {
      if (worker.waiting) worker.alarm.Cancel();  // a request not sent yet is not sent at all
    }
    if (stop_mode_ == StopMode::kWait) return;
    for (Worker& worker : workers_) {
      if (worker.context) worker.context->TryCancel();
    }
  }

  // Every finished call so far as (end ns, latency ns, code, details), in completion order; takes them.
  // Code -1: the call was cut off by stop("close").
  py::list take_records() {
    std::vector<CallRecord> records;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      records.swap(records_);
    }
    py::list out(records.size());
    for (size_t i = 0; i < records.size(); ++i) {
      const CallRecord& r = records[i];
      out[i] = py::make_tuple(r.end_ns, r.latency_ns, r.code, r.details);
    }
    return out;
  }

 private:
  struct Worker {
    Channel* channel = nullptr;
    grpc::CompletionQueue* queue = nullptr;  // its connection's, polled by one thread
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
    grpc::ByteBuffer response;
    grpc::Status status;
    int64_t started_ns = 0;
    grpc::Alarm alarm;     // --rps: fires when the worker's next request is due
    bool waiting = false;  // on the alarm, not on a call
    int64_t number = 0;    // the request it sends next
  };

  // Start `worker`'s next call unless the run is over; the caller holds mutex_.
  bool StartLocked(Worker& worker) {
    worker.reader.reset();  // before its context: the reader lives in the call's memory
    if (stopping_ || (total_ > 0 && issued_ >= total_)) {
      worker.context.reset();
      return false;
    }
    worker.number = issued_++;
    if (interval_ns_ > 0) {
      int64_t due_ns = started_ns_ + static_cast<int64_t>(worker.number * interval_ns_);
      int64_t wait_ns = due_ns - MonotonicNs();
      if (wait_ns > 0) {
        worker.waiting = true;
        worker.alarm.Set(worker.queue, std::chrono::system_clock::now() + std::chrono::nanoseconds(wait_ns), &worker);
        return true;
      }
    }
    return SendLocked(worker);
  }

  // Send `worker`'s request now unless the run was stopped meanwhile; the caller holds mutex_.
  bool SendLocked(Worker& worker) {
    if (stopping_) {
      worker.context.reset();
      return false;
    }
    const grpc::ByteBuffer& payload = payloads_[worker.number % payloads_.size()];
    worker.context = std::make_unique<grpc::ClientContext>();
    for (const auto& [key, value] : metadata_) worker.context->AddMetadata(key, value);
    worker.started_ns = MonotonicNs();
    if (timeout_ns_ > 0) {
      worker.context->set_deadline(std::chrono::system_clock::now() + std::chrono::nanoseconds(timeout_ns_));
    }
    worker.reader = worker.channel->stub_->PrepareUnaryCall(worker.context.get(), method_, payload, worker.queue);
    worker.reader->StartCall();
    worker.reader->Finish(&worker.response, &worker.status, &worker);
    return true;
  }

  // Keep `worker`'s finished call, as the stop mode says; the caller holds mutex_.
  void RecordLocked(const Worker& worker, int64_t end_ns) {
    int64_t latency_ns = end_ns - worker.started_ns;
    if (!stopping_ || stop_mode_ == StopMode::kWait) {
      records_.push_back(CallRecord{end_ns, latency_ns, static_cast<int>(worker.status.error_code()),
                                    worker.status.error_message()});
    } else if (stop_mode_ == StopMode::kClose) {
      records_.push_back(CallRecord{end_ns, latency_ns, kCutOff, ""});
    }
  }

  static constexpr int kCutOff = -1;  // cut off by stop(close): Python reports Go's closing-connection error

  std::string method_;
  std::vector<grpc::ByteBuffer> payloads_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  int64_t total_;
  int64_t timeout_ns_;
  double interval_ns_;  // --rps: ns between scheduled requests; 0 = as fast as answers come
  int64_t started_ns_ = 0;
  std::vector<Worker> workers_;
  std::vector<std::unique_ptr<grpc::CompletionQueue>> queues_;
  std::mutex mutex_;  // guards the workers' contexts, issued_, the stop state and records_
  int64_t issued_ = 0;
  bool stopping_ = false;
  StopMode stop_mode_ = StopMode::kWait;
  std::vector<CallRecord> records_;
};

}  // namespace

PYBIND11_MODULE(_loadtest, module) {
  module.doc() = "grpc++ unary calls for the load generator, completions handed over in bulk.";
  recserve::SkipMutexDeadlockDetection();
  py::class_<Channel>(module, "Channel")
      .def(py::init<const std::string&, const std::vector<std::pair<std::string, int>>&,
                    const std::vector<std::pair<std::string, std::string>>&, bool, const std::string&,
                    const std::string&, const std::string&>(),
           py::arg("target"), py::arg("int_options"), py::arg("string_options"), py::arg("tls") = false,
           py::arg("root_pem") = "", py::arg("key_pem") = "", py::arg("cert_pem") = "")
      .def("wait_ready", &Channel::wait_ready)
      .def("start", &Channel::start)
      .def("cancel", &Channel::cancel)
      .def("event_fd", &Channel::event_fd)
      .def("drain", &Channel::drain)
      .def("close", &Channel::close);
  py::class_<ClosedLoop>(module, "ClosedLoop")
      .def(py::init<std::vector<Channel*>, std::string, const std::vector<py::bytes>&,
                    std::vector<std::pair<std::string, std::string>>, int, int64_t, std::optional<double>,
                    double>(),
           py::arg("channels"), py::arg("method"), py::arg("payloads"), py::arg("metadata"), py::arg("concurrency"),
           py::arg("total"), py::arg("timeout_s"), py::arg("rps") = 0.0, py::keep_alive<1, 2>())
      .def("run", &ClosedLoop::run)
      .def("stop", &ClosedLoop::stop)
      .def("take_records", &ClosedLoop::take_records);
}
