// The native gRPC front end: grpc++'s callback server accepts every call, and hands calls to Python in bulk.
//
// Why: with grpc.aio, each call costs the event loop ~370 us of CPU inside grpc's Cython layer and the
// asyncio plumbing around it (measured against a trivial server on 2 cores); grpc++ does the same work in
// ~80 us on its own threads, without the GIL. Here those threads never touch Python: they push events onto
// a queue and wake the event loop through an eventfd, and Python takes every queued event in one call.
//
// Each call is one generic bidirectional stream: the front end knows no message types, only bytes. The first
// message is read before Python hears of the call, so a unary call is one event in and one `finish` out.

#include "event_queue.h"
#include "grpc_tuning.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <thread>
#include <tuple>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

enum EventKind : int {
  kNew = 0,        // a call arrived; payload: its first message (absent: the client sent none)
  kRead = 1,       // a requested read finished; payload absent at end of stream
  kWriteDone = 2,  // a write finished (ok: it reached the transport)
  kCancelled = 3,  // the client cancelled, the deadline passed, or the connection broke
};

class Call;

struct Event {
  EventKind kind;
  std::shared_ptr<Call> call;
  std::optional<std::string> payload;
  bool ok = true;
};

using EventQueue = recserve::EventQueue<Event>;

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  size_t size = 0;
  for (const auto& slice : slices) size += slice.size();
  out.reserve(size);
  for (const auto& slice : slices) out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return out;
}

grpc::ByteBuffer ToBuffer(std::string data) {
  grpc::Slice slice(std::move(data));
  return grpc::ByteBuffer(&slice, 1);
}

using Metadata = std::vector<std::pair<std::string, py::bytes>>;

enum class OpKind { kRead, kWrite, kFinish };

struct Op {
  OpKind kind;
  std::shared_ptr<Call> call;
  int code = 0;
  std::string details;
  std::optional<std::string> payload;
};

// Starts reads, writes and finishes on a thread of its own. grpc++ may write to the socket inline when an
// operation starts; doing that on the event loop thread would either hold the GIL through a syscall or
// hand the GIL to a batch thread and wait to get it back. Here Python only appends to a list. One thread
// keeps each call's operations in the order Python issued them.
class OpRunner {
 public:
  OpRunner() : thread_([this] {
    pthread_setname_np(pthread_self(), "recserve-ops");
    Loop();
  }) {}
  ~OpRunner() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }

  // Queue an operation; it starts at the next Flush. Python queues a burst (a batch's responses) and
  // flushes once, so the wake-up costs one futex call per burst, not one per call.
  void Push(Op op) {
    std::lock_guard<std::mutex> lock(mutex_);
    ops_.push_back(std::move(op));
  }

  void Flush() { wake_.notify_one(); }

 private:
  void Loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Op> ops_;
  bool stopping_ = false;
  std::thread thread_;
};

// Overload admission before Python: under overload most calls must be refused, and refusing them on the
// event loop (a task, a context, a decode each) eats the cores the accepted calls need, while new calls pile
// up in the event queue unseen by the batcher. So the batcher publishes its cost model here (at every batch
// boundary: how long the queue takes to drain per request, how long a batch of one takes, how many rows can
// execute at once), this side counts the batched calls it let in and that are not done yet, and the first
// read of a call of a batched method is checked against the queue-wait bound and the call's own deadline:
// expected wait = (calls let in beyond what executes at once) x drain time per request + how long events now
// wait for the event loop. A refused call is answered from this thread and never reaches Python. The batcher
// checks again, exactly, the calls let through.
class Admission {
 public:
  struct Config {
    std::vector<std::string> methods;
    int64_t max_wait_ns = 0;  // 0: no bound
    bool deadline_aware = false;
  };

  Admission() : config_(std::make_shared<const Config>()) {}

  void Configure(std::vector<std::string> methods, int64_t max_wait_ns, bool deadline_aware) {
    auto config = std::make_shared<Config>();
    config->methods = std::move(methods);
    config->max_wait_ns = max_wait_ns;
    config->deadline_aware = deadline_aware;
    std::lock_guard<std::mutex> lock(counts_mutex_);
    counts_.resize(std::max(counts_.size(), 2 * config->methods.size()), 0);
    std::atomic_store(&config_, std::shared_ptr<const Config>(std::move(config)));
  }

  // The batcher's cost model now.
  void Publish(int64_t drain_ns, int64_t batch_ns, int64_t parallel_rows) {
    drain_ns_.store(drain_ns, std::memory_order_relaxed);
    batch_ns_.store(batch_ns, std::memory_order_relaxed);
    parallel_rows_.store(parallel_rows, std::memory_order_relaxed);
  }

  // A call let in has ended.
  void Done() { admitted_.fetch_sub(1, std::memory_order_relaxed); }

  struct Decision {
    bool guarded = false;               // a batched method: Done() is due when the call ends, if admitted
    std::optional<grpc::Status> refusal;  // set: answer this, and the call is not admitted
  };

  // Whether a call of `method` arriving now is let in.
  Decision Admit(const std::string& method, const gpr_timespec& deadline, int64_t lag_ns) {
    auto config = std::atomic_load(&config_);
    size_t index = 0;
    while (index < config->methods.size() && config->methods[index] != method) ++index;
    if (index == config->methods.size()) return {};
    Decision decision{true, Refusal(*config, index, deadline, lag_ns)};
    if (!decision.refusal) admitted_.fetch_add(1, std::memory_order_relaxed);
    return decision;
  }

 private:
  std::optional<grpc::Status> Refusal(const Config& settings, size_t index, const gpr_timespec& deadline,
                                      int64_t lag_ns) {
    const Config* config = &settings;
    int64_t ahead = admitted_.load(std::memory_order_relaxed) - parallel_rows_.load(std::memory_order_relaxed);
    int64_t wait_ns = std::max<int64_t>(0, ahead) * drain_ns_.load(std::memory_order_relaxed) + lag_ns;
    std::optional<grpc::Status> reason;
    if (config->max_wait_ns > 0 && wait_ns > config->max_wait_ns) {
      reason = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "overloaded: a request queued now would wait ~" + Ms(wait_ns) + " ms, more than the " +
                                Ms(config->max_wait_ns) +
                                " ms this server queues a request (batching.max_queue_wait_microseconds); back "
                                "off and retry, or use another replica");
    } else if (config->deadline_aware && gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) != 0) {
      gpr_timespec left = gpr_time_sub(deadline, gpr_now(deadline.clock_type));
      int64_t left_ns = static_cast<int64_t>(left.tv_sec) * 1000000000 + left.tv_nsec;
      int64_t batch_ns = batch_ns_.load(std::memory_order_relaxed);
      if (batch_ns > left_ns) {
        reason = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                              "the deadline (" + Ms(std::max<int64_t>(left_ns, 0)) +
                                  " ms left) is shorter than a batch takes (~" + Ms(batch_ns) +
                                  " ms); the request was not executed");
      } else if (wait_ns + batch_ns > left_ns) {
        reason = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "overloaded: a request queued now would be answered in ~" + Ms(wait_ns + batch_ns) +
                                  " ms, after its deadline (" + Ms(std::max<int64_t>(left_ns, 0)) +
                                  " ms left); back off and retry, or use another replica");
      }
    }
    if (reason) {
      std::lock_guard<std::mutex> lock(counts_mutex_);
      ++counts_[2 * index + (reason->error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? 1 : 0)];
    }
    return reason;
  }

 public:

  // Calls refused so far, as (method, status name, count).
  std::vector<std::tuple<std::string, std::string, uint64_t>> Refused() {
    auto config = std::atomic_load(&config_);
    std::lock_guard<std::mutex> lock(counts_mutex_);
    std::vector<std::tuple<std::string, std::string, uint64_t>> out;
    for (size_t i = 0; i < config->methods.size(); ++i) {
      out.emplace_back(config->methods[i], "RESOURCE_EXHAUSTED", counts_[2 * i]);
      out.emplace_back(config->methods[i], "DEADLINE_EXCEEDED", counts_[2 * i + 1]);
    }
    return out;
  }

 private:
  static std::string Ms(int64_t ns) { return std::to_string((ns + 500000) / 1000000); }

  std::shared_ptr<const Config> config_;
  std::atomic<int64_t> drain_ns_{0};
  std::atomic<int64_t> batch_ns_{0};
  std::atomic<int64_t> parallel_rows_{0};
  std::atomic<int64_t> admitted_{0};  // batched calls let in and not ended
  std::mutex counts_mutex_;
  std::vector<uint64_t> counts_;
};

// One call: the grpc++ reactor, and the handle Python holds. It lives while either side needs it: grpc's
// side drops its reference in OnDone, Python's when it lets go of the handle.
class Call : public grpc::ServerGenericBidiReactor, public std::enable_shared_from_this<Call> {
 public:
  Call(grpc::GenericCallbackServerContext* context, EventQueue* queue, OpRunner* runner, Admission* admission,
       uint64_t id)
      : context_(context),
        queue_(queue),
        runner_(runner),
        admission_(admission),
        id_(id),
        method_(context->method()),
        deadline_(context->raw_deadline()) {}

  void Begin(std::shared_ptr<Call> self) {
    self_ = std::move(self);
    if (RefusedAsOverload()) return;
    StartRead(&request_);
  }

  // --- grpc++ reactions (grpc's threads; no GIL) ---
  void OnReadDone(bool ok) override {
    Event event{first_read_ ? kNew : kRead, shared_from_this(), std::nullopt, ok};
    first_read_ = false;
    if (ok) event.payload = ToString(request_);
    request_.Clear();
    queue_->Push(std::move(event));
  }
  void OnWriteDone(bool ok) override { queue_->Push(Event{kWriteDone, shared_from_this(), std::nullopt, ok}); }
  void OnCancel() override {
    cancelled_ = true;
    queue_->Push(Event{kCancelled, shared_from_this(), std::nullopt, false});
  }
  void OnDone() override {
    {
      std::lock_guard<std::recursive_mutex> lock(mutex_);
      done_ = true;
    }
    Release();
    self_.reset();  // may delete this
  }

  // No longer counted by admission (once: whichever of finish and OnDone comes first).
  void Release() {
    if (admitted_.exchange(false)) admission_->Done();
  }

  // Answer RESOURCE_EXHAUSTED here, on grpc's thread, if admission refuses the call; Python never sees it.
  // Called from Begin, before the request is read: no read op for a request that is dropped anyway, and
  // grpc cannot report a cancellation yet (the reactor is not bound), so Python's answer to one cannot race
  // this Finish. At the first read it could: a 1 ms deadline expired meanwhile, Python finished the call as
  // cancelled, and the second Finish aborted the process.
  bool RefusedAsOverload() {
    Admission::Decision decision = admission_->Admit(method_, deadline_, queue_->OldestAgeNs());
    if (!decision.refusal) {
      admitted_.store(decision.guarded);
      return false;
    }
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    if (!finished_) {  // a second Finish aborts the process (grpc's assertion call_ == nullptr)
      finished_ = true;
      Finish(*decision.refusal);
    }
    return true;
  }

  // --- Python's side (event loop thread, GIL held unless released below) ---
  uint64_t id() const { return id_; }
  const std::string& method() const { return method_; }
  bool cancelled() const { return cancelled_; }

  // Seconds left before the client's deadline, or None when it set none.
  std::optional<double> time_remaining() const {
    const gpr_timespec& deadline = deadline_;
    if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0) return std::nullopt;
    gpr_timespec now = gpr_now(deadline.clock_type);
    gpr_timespec left = gpr_time_sub(deadline, now);
    return static_cast<double>(left.tv_sec) + left.tv_nsec * 1e-9;
  }

  Metadata metadata() const {
    Metadata out;
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    if (done_) return out;
    for (const auto& [key, value] : context_->client_metadata()) {
      out.emplace_back(std::string(key.data(), key.size()), py::bytes(value.data(), value.size()));
    }
    return out;
  }

  std::string peer() const {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    return done_ ? std::string() : context_->peer();
  }

  void add_initial_metadata(const std::string& key, const std::string& value) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    if (!done_) context_->AddInitialMetadata(key, value);
  }

  void add_trailing_metadata(const std::string& key, const std::string& value) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    if (!done_) context_->AddTrailingMetadata(key, value);
  }

  // Python's requests: queued for the op runner, which calls Apply.
  void read() { runner_->Push(Op{OpKind::kRead, shared_from_this()}); }

  void write(std::string payload) {
    runner_->Push(Op{OpKind::kWrite, shared_from_this(), 0, {}, std::move(payload)});
  }

  // End the call: the status, and for OK the response message if there is one. Later finishes are ignored.
  void finish(int code, std::string details, std::optional<std::string> payload) {
    {
      std::lock_guard<std::recursive_mutex> lock(mutex_);
      if (finished_) return;
      finished_ = true;
    }
    Release();  // its work is done: an answer the client does not read must not count as queued
    runner_->Push(Op{OpKind::kFinish, shared_from_this(), code, std::move(details), std::move(payload)});
  }

  // --- the op runner's thread ---
  void Apply(Op& op) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    if (done_) return;
    switch (op.kind) {
      case OpKind::kRead:
        StartRead(&request_);
        break;
      case OpKind::kWrite:
        response_ = ToBuffer(std::move(*op.payload));
        StartWrite(&response_);
        break;
      case OpKind::kFinish: {
        grpc::Status status(static_cast<grpc::StatusCode>(op.code), std::move(op.details));
        if (op.payload && op.code == 0) {
          response_ = ToBuffer(std::move(*op.payload));
          StartWriteAndFinish(&response_, grpc::WriteOptions(), status);
        } else {
          Finish(status);
        }
        break;
      }
    }
  }

 private:
  grpc::GenericCallbackServerContext* context_;
  EventQueue* queue_;
  OpRunner* runner_;
  Admission* admission_;
  uint64_t id_;
  std::string method_;
  gpr_timespec deadline_;
  std::shared_ptr<Call> self_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  mutable std::recursive_mutex mutex_;
  bool first_read_ = true;
  std::atomic<bool> admitted_{false};  // counted by admission until Python finishes the call, or it ends
  bool done_ = false;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
};

void OpRunner::Loop() {
  std::vector<Op> batch;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !ops_.empty(); });
      if (ops_.empty()) return;  // stopping, nothing left
      batch.swap(ops_);
    }
    for (Op& op : batch) op.call->Apply(op);
    batch.clear();
  }
}

class Service : public grpc::CallbackGenericService {
 public:
  Service(EventQueue* queue, OpRunner* runner, Admission* admission)
      : queue_(queue), runner_(runner), admission_(admission) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    auto call = std::make_shared<Call>(context, queue_, runner_, admission_, next_id_.fetch_add(1));
    Call* raw = call.get();
    raw->Begin(std::move(call));
    return raw;
  }

 private:
  EventQueue* queue_;
  OpRunner* runner_;
  Admission* admission_;
  std::atomic<uint64_t> next_id_{1};
};

class Frontend {
 public:
  Frontend() : service_(&queue_, &runner_, &admission_) {}
  ~Frontend() {
    if (server_) {
      py::gil_scoped_release release;
      server_->Shutdown(std::chrono::system_clock::now());
    }
  }

  int add_insecure_port(const std::string& address) {
    return AddPort(address, grpc::InsecureServerCredentials());
  }

  // Listen with TLS. grpc++ reads the key and certificate chain (and for mutual TLS the client CA bundle)
  // by these paths now and every `refresh_interval_s` seconds after, so files replaced in place (a
  // Kubernetes Secret's symlink swap) reach new connections without a restart; open connections keep theirs.
  // An empty `client_ca_path` means no client certificate is asked for; otherwise one signed by that CA is
  // required and verified in the handshake.
  int add_tls_port(const std::string& address, const std::string& key_path, const std::string& cert_path,
                   const std::string& client_ca_path, unsigned int refresh_interval_s) {
    auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        key_path, cert_path, client_ca_path, refresh_interval_s);
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (client_ca_path.empty()) {
      options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    } else {
      options.watch_root_certs();
      options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    }
    providers_.push_back(provider);  // the watcher thread lives as long as the server
    return AddPort(address, grpc::experimental::TlsServerCredentials(options));
  }

  void set_int_option(const std::string& key, int value) { builder_.AddChannelArgument(key, value); }
  void set_string_option(const std::string& key, const std::string& value) {
    builder_.AddChannelArgument(key, value);
  }

  // Start serving; returns the bound ports in the order they were added (0 where binding failed).
  std::vector<int> start() {
    builder_.RegisterCallbackGenericService(&service_);
    server_ = builder_.BuildAndStart();
    if (!server_) throw std::runtime_error("the gRPC server failed to start (is the port in use?)");
    std::vector<int> bound;
    for (const auto& port : ports_) bound.push_back(*port);
    return bound;
  }

  int event_fd() const { return queue_.fd(); }

  // Overload admission (see Admission): which methods it guards, the queue-wait bound (0: none), whether
  // deadlines count; then, at every batch boundary, the batcher's cost model.
  void set_admission(std::vector<std::string> methods, int64_t max_wait_ns, bool deadline_aware) {
    admission_.Configure(std::move(methods), max_wait_ns, deadline_aware);
  }
  void publish_costs(int64_t drain_ns, int64_t batch_ns, int64_t parallel_rows) {
    admission_.Publish(drain_ns, batch_ns, parallel_rows);
  }
  std::vector<std::tuple<std::string, std::string, uint64_t>> admission_refused() { return admission_.Refused(); }

  // Start every read, write and finish queued since the last flush.
  void flush() { runner_.Flush(); }

  // Every queued event as (kind, call, payload, ok) tuples.
  py::list drain() {
    std::vector<Event> events = queue_.Take();
    py::list out(events.size());
    for (size_t i = 0; i < events.size(); ++i) {
      Event& event = events[i];
      py::object payload = event.payload ? py::object(py::bytes(*event.payload)) : py::none();
      out[i] = py::make_tuple(static_cast<int>(event.kind), py::cast(event.call), payload, event.ok);
    }
    return out;
  }

  // Stop accepting calls; calls still running get until `grace_s` to finish, then are cancelled.
  void shutdown(double grace_s) {
    if (!server_) return;
    py::gil_scoped_release release;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, grace_s) * 1e6));
    server_->Shutdown(deadline);
    server_->Wait();
  }

 private:
  int AddPort(const std::string& address, std::shared_ptr<grpc::ServerCredentials> credentials) {
    auto port = std::make_unique<int>(0);
    builder_.AddListeningPort(address, std::move(credentials), port.get());
    ports_.push_back(std::move(port));
    return static_cast<int>(ports_.size()) - 1;
  }

  EventQueue queue_;
  OpRunner runner_;
  Admission admission_;
  Service service_;
  grpc::ServerBuilder builder_;
  std::vector<std::unique_ptr<int>> ports_;
  std::vector<std::shared_ptr<grpc::experimental::CertificateProviderInterface>> providers_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace

PYBIND11_MODULE(_frontend, module) {
  module.doc() = "grpc++ callback server that hands calls to Python in bulk (see server/frontend).";
  recserve::SkipMutexDeadlockDetection();
  module.attr("NEW") = static_cast<int>(kNew);
  module.attr("READ") = static_cast<int>(kRead);
  module.attr("WRITE_DONE") = static_cast<int>(kWriteDone);
  module.attr("CANCELLED") = static_cast<int>(kCancelled);
  module.attr("GRPC_VERSION") = grpc::Version();

  py::class_<Call, std::shared_ptr<Call>>(module, "Call")
      .def_property_readonly("id", &Call::id)
      .def_property_readonly("method", &Call::method)
      .def_property_readonly("cancelled", &Call::cancelled)
      .def("time_remaining", &Call::time_remaining)
      .def("metadata", &Call::metadata)
      .def("peer", &Call::peer)
      .def("add_initial_metadata", &Call::add_initial_metadata)
      .def("add_trailing_metadata", &Call::add_trailing_metadata)
      .def("read", &Call::read)
      .def("write", &Call::write)
      .def("finish", &Call::finish, py::arg("code"), py::arg("details"), py::arg("payload") = py::none());

  py::class_<Frontend>(module, "Frontend")
      .def(py::init<>())
      .def("add_insecure_port", &Frontend::add_insecure_port)
      .def("add_tls_port", &Frontend::add_tls_port, py::arg("address"), py::arg("key_path"),
           py::arg("cert_path"), py::arg("client_ca_path"), py::arg("refresh_interval_s"))
      .def("set_int_option", &Frontend::set_int_option)
      .def("set_string_option", &Frontend::set_string_option)
      .def("start", &Frontend::start)
      .def("event_fd", &Frontend::event_fd)
      .def("flush", &Frontend::flush)
      .def("set_admission", &Frontend::set_admission)
      .def("publish_costs", &Frontend::publish_costs)
      .def("admission_refused", &Frontend::admission_refused)
      .def("drain", &Frontend::drain)
      .def("shutdown", &Frontend::shutdown);
}
