/* How long a move into a cgroup v1 takes: through cgroup.procs (the whole
 * thread group, under the kernel's global cgroup_threadgroup_rwsem) and
 * through tasks with "0" (the calling thread only, without that lock), as a
 * forked child does it before exec. Each sample forks, writes, exits, 100 ms
 * after the previous one (so the RCU state has gone idle, as between cron
 * jobs). Built and run by bench/cgroup_v1_move.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/wait.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  const char*dir=argv[1]; int n=atoi(argv[2]);
  const char*files[2]={"cgroup.procs","tasks"};
  double r[2][64];
  for(int i=0;i<n;i++) for(int f=0;f<2;f++){
    char p[256]; snprintf(p,sizeof p,"%s/%s",dir,files[f]);
    usleep(100000);
    double t0=now(); pid_t c=fork();
    if(c==0){int fd=open(p,O_WRONLY); if(fd<0||write(fd,"0",1)!=1) _exit(1); _exit(0);}
    int st; waitpid(c,&st,0); r[f][i]=now()-t0;
    if(st!=0){printf("write to %s failed\n",p);}
  }
  for(int f=0;f<2;f++){qsort(r[f],n,sizeof(double),cmp); printf("CGMOVE %s: median %.2f ms, min %.2f, max %.2f (fork, write 0, exit; %d runs)\n",files[f],r[f][n/2],r[f][0],r[f][n-1],n);}
  return 0;
}
